// The Storage account: uploads, quarantine, instances and the Function App's deployment
// package. Shared keys are off (identity only); blob versioning and soft delete keep an
// overwritten or deleted upload recoverable. A system topic publishes blob events so
// that the Event Grid based blob trigger (Flex Consumption) sees new uploads.

param location string
param tags object
param resourceToken string
param appPrincipalId string
param deploymentContainerName string
param enablePrivateNetworking bool

@description('Days a deleted blob, version or container can be restored.')
param softDeleteDays int = 30

var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'

// The names the code uses (Settings.uploads_container, ...), and the package container.
var containerNames = [
  'uploads'
  'quarantine'
  'instances'
  deploymentContainerName
]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'st${resourceToken}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    // checkov:skip=CKV_AZURE_206: ZRS keeps three copies in the region; GRS is a per-Trust choice (data residency), set it here when wanted.
    name: 'Standard_ZRS'
  }
  properties: {
    // checkov:skip=CKV_AZURE_43: the name is 'st' plus uniqueString(), lower-case letters and digits, 15 characters; checkov cannot evaluate uniqueString.
    // checkov:skip=CKV_AZURE_35: public network access is the default so that azd and Event Grid reach it; enablePrivateNetworking denies it.
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
    publicNetworkAccess: enablePrivateNetworking ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: enablePrivateNetworking ? 'Deny' : 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    isVersioningEnabled: true
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    changeFeed: {
      enabled: true
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for name in containerNames: {
  parent: blobService
  name: name
  properties: {
    publicAccess: 'None'
  }
}]

// Blob-created events for the ingest function. The subscription itself needs the
// Function App's blobs_extension key, which exists only once the code is deployed:
// infra/hooks/postdeploy.sh creates it.
resource blobEvents 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: 'evgt-${account.name}'
  location: location
  tags: tags
  properties: {
    source: account.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// Blob Data Owner (not Contributor): the Functions host sets blob leases and the
// deployment package is read with it; scoped to this account only.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, appPrincipalId, storageBlobDataOwner)
  scope: account
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
  }
}

// The blob extension keeps its poison queue in Storage queues.
resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, appPrincipalId, storageQueueDataContributor)
  scope: account
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
  }
}

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output blobEventsTopicName string = blobEvents.name
