// The Function App on Flex Consumption (Python 3.11). Every connection is identity-based
// through the user-assigned identity; the settings hold no key, password or connection
// string. Pseudonymisation keys are Key Vault references resolved with that identity.

param location string
param tags object
param resourceToken string
param identityId string
param identityClientId string
param storageName string
param deploymentContainerName string
param serviceBusNamespace string
param cosmosEndpoint string
param cosmosDatabase string
param keyVaultName string
param appInsightsName string
param healthWorkspaceName string

@description('EXCHANGE_TENANTS without the service fields (URLs, hosts, partitions).')
param tenants object

param authAudience string
param authIssuer string
param authJwksUrl string
param maxUploadBytes int
param maxInstanceBytes int
param maxZipMembers int
param maxZipRatio string

@description('Subnet for VNet integration (empty: none).')
param subnetId string = ''

param maximumInstanceCount int = 100
param instanceMemoryMB int = 2048

var storageSuffix = environment().suffixes.storage

// One entry per tenant of EXCHANGE_TENANTS (shared_code/config.py). Service URLs follow
// the names health.bicep gives the services: <workspace>-<tenant without '-'>.
var tenantSpecs = [for t in items(tenants): {
  name: t.key
  // The tenant's own fields (policy, share_to, deid_*, ...) pass through unchanged;
  // config.py validates them at start-up.
  spec: union(t.value, {
    dicomweb_root: 'https://${healthWorkspaceName}-${replace(t.key, '-', '')}.dicom.azurehealthcareapis.com/v2'
    dicom_service_host: '${healthWorkspaceName}-${replace(t.key, '-', '')}.dicom.azurehealthcareapis.com'
    partition_name: 'Microsoft.Default'
    fhir_base_url: 'https://${healthWorkspaceName}-${replace(t.key, '-', '')}.fhir.azurehealthcareapis.com'
  })
}]
// Bicep has no object comprehension that every parser here reads (toObject needs a
// lambda), so the JSON object is joined from one '"name":{...}' member per tenant.
var tenantEntries = [for entry in tenantSpecs: '"${entry.name}":${string(entry.spec)}']
var tenantsJson = '{${join(tenantEntries, ',')}}'

// EXCHANGE_PSEUDONYM_KEY_<TENANT> for every tenant (a clinical tenant's key is unused
// until its policy becomes research); secrets are made by infra/hooks/postprovision.sh.
var pseudonymKeySettings = [for t in items(tenants): {
  name: 'EXCHANGE_PSEUDONYM_KEY_${toUpper(replace(t.key, '-', '_'))}'
  value: '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=pseudonym-key-${t.key})'
}]

var appSettings = [
  // The Functions host: storage through the identity (no AzureWebJobsStorage string).
  {
    name: 'AzureWebJobsStorage__blobServiceUri'
    value: 'https://${storageName}.blob.${storageSuffix}'
  }
  {
    name: 'AzureWebJobsStorage__queueServiceUri'
    value: 'https://${storageName}.queue.${storageSuffix}'
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
  {
    name: 'ServiceBusConnection__fullyQualifiedNamespace'
    value: serviceBusNamespace
  }
  {
    name: 'ServiceBusConnection__credential'
    value: 'managedidentity'
  }
  {
    name: 'ServiceBusConnection__clientId'
    value: identityClientId
  }
  // Not a secret: with local auth off, ingestion needs the Entra token below.
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: appInsights.properties.ConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identityClientId};Authorization=AAD'
  }
  // The app (shared_code/config.py).
  {
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
  {
    name: 'EXCHANGE_BUS_KIND'
    value: 'servicebus'
  }
  {
    name: 'EXCHANGE_STATE_KIND'
    value: 'cosmos'
  }
  {
    name: 'COSMOS_ENDPOINT'
    value: cosmosEndpoint
  }
  {
    name: 'COSMOS_DATABASE'
    value: cosmosDatabase
  }
  {
    name: 'EXCHANGE_AUTH_MODE'
    value: 'entra'
  }
  {
    name: 'EXCHANGE_AUTH_ISSUER'
    value: authIssuer
  }
  {
    name: 'EXCHANGE_AUTH_AUDIENCE'
    value: authAudience
  }
  {
    name: 'EXCHANGE_AUTH_JWKS_URL'
    value: authJwksUrl
  }
  {
    name: 'EXCHANGE_TENANTS'
    value: tenantsJson
  }
  {
    name: 'EXCHANGE_MAX_UPLOAD_BYTES'
    value: string(maxUploadBytes)
  }
  {
    name: 'EXCHANGE_MAX_INSTANCE_BYTES'
    value: string(maxInstanceBytes)
  }
  {
    name: 'EXCHANGE_MAX_ZIP_MEMBERS'
    value: string(maxZipMembers)
  }
  {
    name: 'EXCHANGE_MAX_ZIP_RATIO'
    value: maxZipRatio
  }
]

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    // checkov:skip=CKV_AZURE_225: zone redundancy is not offered for every Flex Consumption region; set it where it is.
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-${resourceToken}'
  location: location
  // azd deploys the 'api' service of azure.yaml to the site with this tag.
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    // checkov:skip=CKV_AZURE_16: the API validates Entra bearer tokens itself (shared_code/adapters/auth_jwt.py); Easy Auth would reject the Event Grid blob webhook.
    // checkov:skip=CKV_AZURE_17: client certificates are not how NHS callers authenticate; they send Entra tokens.
    // checkov:skip=CKV_AZURE_62: HTTP callers are Trusts across the country and the Event Grid blob webhook; no region restriction fits them.
    // checkov:skip=CKV_AZURE_212: Flex Consumption scales per trigger from zero; always-ready instances are a cost choice per deployment.
    // checkov:skip=CKV_AZURE_213: /api/health exists; Flex Consumption has no health-check probe setting.
    // checkov:skip=CKV_AZURE_222: public inbound is needed for the Trusts' HTTP calls and the blob webhook.
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    virtualNetworkSubnetId: empty(subnetId) ? null : subnetId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      remoteDebuggingEnabled: false
      appSettings: concat(appSettings, pseudonymKeySettings)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: 'https://${storageName}.blob.${storageSuffix}/${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// No publishing passwords: azd deploys with the signed-in user's Entra token.
resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
