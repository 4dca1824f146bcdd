"""DICOM Exchange: the domain, use cases and adapters behind the Azure Functions app."""
