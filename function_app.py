"""The Azure Functions app: builds the FunctionApp and registers the Blueprints."""

import azure.functions as func

from functions import archive, fhir_sync, ingest, reconcile, shares, studies

app = func.FunctionApp()

for blueprint_module in (ingest, archive, fhir_sync, reconcile, shares, studies):
    app.register_functions(blueprint_module.bp)
