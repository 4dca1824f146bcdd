"""The Bicep gives the code what it reads, grants what it needs and leaks no secret.

Every expectation comes from the code (tests/infra/code_facts.py) or from the issue's
security rules; the Bicep is read with pycep-parser, no Azure and no Bicep compiler.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.infra import bicep, code_facts

# Settings config.py reads that Azure must NOT set, and why.
LOCAL_ONLY = {
    "AzureWebJobsStorage": "a connection string (Azurite); Azure: __blobServiceUri",
    "EXCHANGE_SQLITE_PATH": "EXCHANGE_STATE_KIND=sqlite is the local state store",
    "EXCHANGE_AUTH_LOCAL_PUBLIC_KEY_PATH": "EXCHANGE_AUTH_MODE=local: the local stack",
    "EXCHANGE_DICOMWEB_PASSWORD_": "basic auth to Orthanc; Azure uses managed identity",
}
# Settings the Functions host and its extensions read (not config.py).
HOST_PREFIXES = (
    "AzureWebJobsStorage__",
    "ServiceBusConnection__",
    "APPLICATIONINSIGHTS_",
)

# Built-in roles the app's identity needs, by what the code does with them.
APP_ROLES = {
    "58a3b984-7adf-4c20-983a-32417c86fbc8": "DICOM Data Owner: STOW, WADO, QIDO",
    "5a1fc7df-4bf1-4951-a576-89034ee01acd": "FHIR Data Contributor: ImagingStudy",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner: uploads, host",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor: blob ext.",
    "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39": "Service Bus Data Sender: enqueue work",
    "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0": "Service Bus Data Receiver: triggers",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User: pseudonym keys",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher: telemetry",
}
COSMOS_DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"

# What must never appear in an app setting or an output.
SECRET_PATTERNS = re.compile(
    r"listKeys|listConnectionStrings|listCredentials|primaryKey|secondaryKey|"
    r"AccountKey|SharedAccessKey|connectionString|InstrumentationKey|password",
    re.IGNORECASE,
)
# With DisableLocalAuth the instrumentation key cannot ingest; the host needs it.
SECRET_ALLOWED = {"APPLICATIONINSIGHTS_CONNECTION_STRING"}


@pytest.mark.parametrize(
    "path", bicep.bicep_files(), ids=lambda p: str(p.relative_to(bicep.INFRA))
)
def test_bicep_file_parses(path: Path) -> None:
    document = bicep.parse(path)
    assert document.get("resources") or document.get("modules"), path


def missing_settings(read: code_facts.SettingsRead, settings: set[str]) -> set[str]:
    """What the code reads that the Function App is not given (nor local-only)."""
    missing = {
        name for name in read.names if name not in settings and name not in LOCAL_ONLY
    }
    for prefix in read.prefixes:
        per_tenant = [name for name in settings if name.startswith(prefix + "${")]
        if not per_tenant and prefix not in LOCAL_ONLY:
            missing.add(prefix + "<TENANT>")
    return missing


def test_every_setting_the_code_reads_is_set_on_the_function_app() -> None:
    read = code_facts.config_settings()
    assert read.names, "found no setting in config.py: the AST reader is broken"

    assert missing_settings(read, set(bicep.app_settings())) == set()


def test_a_new_setting_in_config_fails_the_check() -> None:
    source = code_facts.CONFIG.read_text() + (
        "\n\ndef _new(env):\n"
        '    return env.get("EXCHANGE_NEW_THING"), env[f"EXCHANGE_NEW_KEY_{1}"]\n'
    )
    read = code_facts.settings_read(source)

    missing = missing_settings(read, set(bicep.app_settings()))

    assert missing == {"EXCHANGE_NEW_THING", "EXCHANGE_NEW_KEY_<TENANT>"}


def test_every_setting_the_code_reads_is_in_the_sample() -> None:
    read = code_facts.config_settings()
    sample = code_facts.sample_settings()

    assert read.names - sample == set()
    for prefix in read.prefixes:
        assert any(name.startswith(prefix) for name in sample), prefix


def test_app_settings_are_sample_names_or_host_settings() -> None:
    sample = code_facts.sample_settings()
    prefixes = code_facts.config_settings().prefixes
    for name in bicep.app_settings():
        known = (
            name in sample
            or name.startswith(HOST_PREFIXES)
            or any(name.startswith(prefix + "${") for prefix in prefixes)
        )
        assert known, f"{name} is neither in local.settings.sample.json nor a host one"
    assert not set(bicep.app_settings()) & set(LOCAL_ONLY)


def test_trigger_connections_are_identity_based() -> None:
    settings = bicep.app_settings()
    connections = {
        t.keywords["connection"]
        for t in code_facts.triggers()
        if "connection" in t.keywords
    }
    assert connections, "found no trigger connection in functions/"

    for connection in connections:
        assert settings.get(f"{connection}__credential") == "managedidentity"
        assert settings.get(f"{connection}__clientId") == "identityClientId"
        endpoints = {
            f"{connection}__fullyQualifiedNamespace",
            f"{connection}__blobServiceUri",
            f"{connection}__serviceUri",
        }
        assert endpoints & set(settings), f"{connection} has no endpoint setting"
    assert settings["AZURE_CLIENT_ID"] == "identityClientId"


def test_every_queue_the_code_uses_exists_with_dead_lettering() -> None:
    used = code_facts.settings_defaults("_queue") | {
        t.keywords["queue_name"]
        for t in code_facts.triggers()
        if "queue_name" in t.keywords
    }
    queues = {
        q["name"]: q
        for q in bicep.variable(bicep.INFRA / "modules/servicebus.bicep", "queues")
    }
    queue = bicep.the_resource("Microsoft.ServiceBus/namespaces/queues").properties

    assert used - set(queues) == set()
    assert queue["deadLetteringOnMessageExpiration"] is True
    assert queue["requiresDuplicateDetection"] is True
    for spec in queues.values():
        assert 1 < spec["maxDeliveryCount"] <= 10, spec
    events = bicep.module_params("health.bicep")["eventsQueueName"]
    assert events in code_facts.settings_defaults("_queue")


def test_every_blob_container_the_code_uses_exists() -> None:
    used = code_facts.settings_defaults("_container") | {
        t.keywords["path"].split("/")[0]
        for t in code_facts.triggers()
        if t.kind == "blob_trigger"
    }
    containers = set(
        bicep.variable(bicep.INFRA / "modules/storage.bicep", "containerNames")
    )

    assert used - containers == set()


def test_every_state_container_exists_with_partition_key_pk() -> None:
    used = code_facts.state_containers()
    assert used, "found no state container in the services: the AST reader is broken"
    cosmos = bicep.INFRA / "modules/cosmos.bicep"
    container = bicep.the_resource(
        "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers"
    )

    assert used - set(bicep.variable(cosmos, "containerNames")) == set()
    assert container.properties["resource"]["partitionKey"]["paths"] == ["/pk"]


def test_the_app_identity_holds_every_role_it_needs() -> None:
    granted = {
        bicep.role_definition_guid(r)
        for r in bicep.resources("Microsoft.Authorization/roleAssignments")
        if r.properties["principalId"] == "appPrincipalId"
    }
    assert set(APP_ROLES) - granted == set(), [APP_ROLES[g] for g in APP_ROLES]

    cosmos = bicep.the_resource(
        "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments"
    )
    assert cosmos.properties["principalId"] == "appPrincipalId"
    assert cosmos.properties["roleDefinitionId"].endswith("${cosmosDataContributor}")
    assert (
        bicep.variable(cosmos.file, "cosmosDataContributor") == COSMOS_DATA_CONTRIBUTOR
    )


def test_app_principal_is_the_function_app_identity_in_every_module() -> None:
    main = bicep.parse(bicep.MAIN)["modules"]
    for symbol, declared in main.items():
        params = bicep._unwrap(declared["config"])["params"]
        if "appPrincipalId" in params:
            assert json.dumps(params["appPrincipalId"]).count('"identity"') == 1, symbol
    site = bicep.the_resource("Microsoft.Web/sites")
    assert site.config["identity"]["type"] == "UserAssigned"


def test_dicom_events_reach_the_events_queue_by_topic_identity() -> None:
    subscription = bicep.the_resource(
        "Microsoft.EventGrid/systemTopics/eventSubscriptions"
    ).properties
    delivery = subscription["deliveryWithResourceIdentity"]
    sender = next(
        r
        for r in bicep.resources("Microsoft.Authorization/roleAssignments")
        if r.symbol == "topicSends"
    )

    assert set(subscription["filter"]["includedEventTypes"]) == {
        "Microsoft.HealthcareApis.DicomImageCreated",
        "Microsoft.HealthcareApis.DicomImageDeleted",
        "Microsoft.HealthcareApis.DicomImageUpdated",
    }
    assert delivery["destination"]["endpointType"] == "ServiceBusQueue"
    assert sender.config["scope"] == "eventsQueue"
    assert "dicomEvents" in json.dumps(sender.properties["principalId"])


def test_no_key_or_connection_string_in_settings_or_outputs() -> None:
    for name, value in bicep.app_settings().items():
        if name not in SECRET_ALLOWED:
            assert not SECRET_PATTERNS.search(json.dumps(value)), name
    for path in bicep.bicep_files():
        text = path.read_text()
        assert not re.search(r"listKeys|listConnectionStrings", text), path
        assert "@secure()" not in text, f"{path}: secrets come from Key Vault"
        for name, output in (bicep.parse(path).get("outputs") or {}).items():
            assert not SECRET_PATTERNS.search(name + json.dumps(output)), (path, name)


def test_local_auth_is_off_everywhere() -> None:
    storage = bicep.the_resource("Microsoft.Storage/storageAccounts").properties
    bus = bicep.the_resource("Microsoft.ServiceBus/namespaces").properties
    cosmos = bicep.the_resource("Microsoft.DocumentDB/databaseAccounts").properties
    vault = bicep.the_resource("Microsoft.KeyVault/vaults").properties
    insights = bicep.the_resource("Microsoft.Insights/components").properties

    assert storage["allowSharedKeyAccess"] is False
    assert bus["disableLocalAuth"] is True
    assert cosmos["disableLocalAuth"] is True
    assert vault["enableRbacAuthorization"] is True
    assert insights["DisableLocalAuth"] is True


def test_uploads_cannot_be_lost_by_mistake() -> None:
    blobs = bicep.the_resource(
        "Microsoft.Storage/storageAccounts/blobServices"
    ).properties

    assert blobs["isVersioningEnabled"] is True
    assert blobs["deleteRetentionPolicy"]["enabled"] is True
    assert blobs["containerDeleteRetentionPolicy"]["enabled"] is True


def test_dicom_and_fhir_audit_logs_go_to_log_analytics() -> None:
    scopes = {
        json.dumps(r.config["scope"]): r.properties
        for r in bicep.resources("Microsoft.Insights/diagnosticSettings")
    }
    for service in ("dicom", "fhir"):
        scope = next(s for s in scopes if f'"{service}"' in s)
        assert {"category": "AuditLogs", "enabled": True} in scopes[scope]["logs"]


def test_function_app_runs_python_311_on_flex_consumption() -> None:
    plan = bicep.the_resource("Microsoft.Web/serverfarms")
    runtime = bicep.the_resource("Microsoft.Web/sites").properties["functionAppConfig"]

    assert plan.config["sku"]["tier"] == "FlexConsumption"
    assert runtime["runtime"] == {"name": "python", "version": "3.11"}
    auth = runtime["deployment"]["storage"]["authentication"]
    assert auth["type"] == "UserAssignedIdentity"
