// DICOM Exchange on Azure: one `azd up` provisions everything the Function App talks to,
// wired by its managed identity. See docs/deploy.md and docs/architecture.md.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; names the resource group and tags every resource.')
param environmentName string

@minLength(1)
@description('Azure region of every resource (one with Health Data Services and Flex Consumption).')
param location string

@description('Object id of the user running azd: may set the pseudonymisation keys.')
param principalId string = ''

@description('Tenants, keyed by name (letters, digits, "-"; 3-24 letters and digits without "-"). Each gets a DICOM service and a FHIR service. Fields as in EXCHANGE_TENANTS less the service URLs, which Bicep adds.')
param tenants object = {
  'trust-a': {
    policy: 'clinical'
    patient_identifier_system: 'https://trust-a.example.nhs.uk/Id/local-patient-id'
    share_to: [
      'trust-b'
      'research'
    ]
  }
  'trust-b': {
    policy: 'clinical'
    patient_identifier_system: 'https://trust-b.example.nhs.uk/Id/local-patient-id'
    share_to: [
      'trust-a'
    ]
  }
  research: {
    policy: 'research'
    patient_identifier_system: 'https://research.example.org/Id/pseudonym'
    share_to: []
  }
}

@description('Audience of the API\'s bearer tokens (the app registration\'s Application ID URI).')
param apiAudience string = 'api://dicom-exchange'

@description('Issuer of the API\'s bearer tokens; the default is this Entra tenant, v2 tokens.')
param apiIssuer string = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'

@description('Cosmos DB serverless (pay per request); false: autoscale throughput.')
param cosmosServerless bool = true

@description('Private endpoints for the data services and VNet integration for the Function App.')
param enablePrivateNetworking bool = false

param maxUploadBytes int = 2147483648
param maxInstanceBytes int = 536870912
param maxZipMembers int = 20000
param maxZipRatio string = '200'

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var cosmosDatabase = 'exchange'
var deploymentContainerName = 'app-package'
var tenantNames = [for t in items(tenants): t.key]

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    appPrincipalId: identity.outputs.principalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    appPrincipalId: identity.outputs.principalId
    deploymentContainerName: deploymentContainerName
    enablePrivateNetworking: enablePrivateNetworking
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    appPrincipalId: identity.outputs.principalId
    enablePrivateNetworking: enablePrivateNetworking
  }
}

module cosmos 'modules/cosmos.bicep' = {
  name: 'cosmos'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    appPrincipalId: identity.outputs.principalId
    databaseName: cosmosDatabase
    serverless: cosmosServerless
    enablePrivateNetworking: enablePrivateNetworking
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    appPrincipalId: identity.outputs.principalId
    deployerPrincipalId: principalId
    enablePrivateNetworking: enablePrivateNetworking
  }
}

module health 'modules/health.bicep' = {
  name: 'health'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    appPrincipalId: identity.outputs.principalId
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    serviceBusName: serviceBus.outputs.name
    eventsQueueName: 'dicom-events'
    tenantNames: tenantNames
    enablePrivateNetworking: enablePrivateNetworking
  }
}

module network 'modules/network.bicep' = if (enablePrivateNetworking) {
  name: 'network'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    targets: [
      {
        name: 'blob'
        id: storage.outputs.id
        groupId: 'blob'
        zones: [
          'privatelink.blob.${environment().suffixes.storage}'
        ]
      }
      {
        name: 'queue'
        id: storage.outputs.id
        groupId: 'queue'
        zones: [
          'privatelink.queue.${environment().suffixes.storage}'
        ]
      }
      {
        name: 'servicebus'
        id: serviceBus.outputs.id
        groupId: 'namespace'
        zones: [
          'privatelink.servicebus.windows.net'
        ]
      }
      {
        name: 'cosmos'
        id: cosmos.outputs.id
        groupId: 'Sql'
        zones: [
          'privatelink.documents.azure.com'
        ]
      }
      {
        name: 'vault'
        id: keyVault.outputs.id
        groupId: 'vault'
        zones: [
          'privatelink.vaultcore.azure.net'
        ]
      }
      {
        name: 'health'
        id: health.outputs.workspaceId
        groupId: 'healthcareworkspace'
        zones: [
          'privatelink.azurehealthcareapis.com'
          'privatelink.dicom.azurehealthcareapis.com'
        ]
      }
    ]
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    serviceBusNamespace: serviceBus.outputs.fullyQualifiedNamespace
    cosmosEndpoint: cosmos.outputs.endpoint
    cosmosDatabase: cosmosDatabase
    keyVaultName: keyVault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    healthWorkspaceName: health.outputs.workspaceName
    tenants: tenants
    authAudience: apiAudience
    authIssuer: apiIssuer
    authJwksUrl: '${environment().authentication.loginEndpoint}${tenant().tenantId}/discovery/v2.0/keys'
    maxUploadBytes: maxUploadBytes
    maxInstanceBytes: maxInstanceBytes
    maxZipMembers: maxZipMembers
    maxZipRatio: maxZipRatio
    subnetId: enablePrivateNetworking ? network.outputs.appSubnetId : ''
  }
}

// Names only, read by the azd hooks (infra/hooks/); no key or connection string.
output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_BLOB_EVENTS_TOPIC_NAME string = storage.outputs.blobEventsTopicName
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output EXCHANGE_TENANT_NAMES string = join(tenantNames, ' ')
output EXCHANGE_API_URL string = 'https://${functionApp.outputs.defaultHostName}/api'
