// The Service Bus namespace and the app's queues. Local (SAS) auth is off: the app and
// Event Grid use Entra identities. Each queue's settings follow the work behind it.

param location string
param tags object
param resourceToken string
param appPrincipalId string
param enablePrivateNetworking bool

var serviceBusDataSender = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
var serviceBusDataReceiver = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'

// instances: one STOW-RS of up to EXCHANGE_MAX_INSTANCE_BYTES; the message id is
//   {tenant}:{sha256}, so duplicate detection drops a re-staged instance.
// dicom-events: an ImagingStudy rebuild; FHIR conflicts (412) retry, so more tries.
//   Event Grid sets the message id to the event id.
// shares: a whole study copied instance by instance: long, so a long lock renewed by
//   the host (host.json maxAutoLockRenewalDuration), few tries.
var queues = [
  {
    name: 'instances'
    lockDuration: 'PT5M'
    maxDeliveryCount: 5
  }
  {
    name: 'dicom-events'
    lockDuration: 'PT2M'
    maxDeliveryCount: 10
  }
  {
    name: 'shares'
    lockDuration: 'PT5M'
    maxDeliveryCount: 3
  }
]

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: 'sb-${resourceToken}'
  location: location
  tags: tags
  sku: {
    // Duplicate detection needs Standard; private endpoints need Premium.
    name: enablePrivateNetworking ? 'Premium' : 'Standard'
    tier: enablePrivateNetworking ? 'Premium' : 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: enablePrivateNetworking ? 'Disabled' : 'Enabled'
  }
}

resource networkRules 'Microsoft.ServiceBus/namespaces/networkRuleSets@2022-10-01-preview' = if (enablePrivateNetworking) {
  parent: namespace
  name: 'default'
  properties: {
    // Event Grid delivers DICOM events as a trusted service.
    trustedServiceAccessEnabled: true
    defaultAction: 'Deny'
    publicNetworkAccess: 'Disabled'
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = [for q in queues: {
  parent: namespace
  name: q.name
  properties: {
    lockDuration: q.lockDuration
    maxDeliveryCount: q.maxDeliveryCount
    deadLetteringOnMessageExpiration: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT1H'
    defaultMessageTimeToLive: 'P14D'
    requiresSession: false
    enablePartitioning: false
  }
}]

resource sender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(namespace.id, appPrincipalId, serviceBusDataSender)
  scope: namespace
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSender)
  }
}

resource receiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(namespace.id, appPrincipalId, serviceBusDataReceiver)
  scope: namespace
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataReceiver)
  }
}

output id string = namespace.id
output name string = namespace.name
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'
