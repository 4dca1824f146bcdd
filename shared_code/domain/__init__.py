"""Pure rules: DICOM parsing and validation, de-identification, FHIR mapping, sharing.

Nothing here imports azure.*, reads os.environ or touches the network.
"""
