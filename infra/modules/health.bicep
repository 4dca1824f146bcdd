// Azure Health Data Services: one workspace; per tenant one DICOM service and one R4
// FHIR service (the tenant model: a Trust's images and resources live in services of
// its own, with role assignments of their own). Audit logs go to Log Analytics. DICOM
// change events go through an Event Grid system topic to the dicom-events queue.

param location string
param tags object
param resourceToken string
param appPrincipalId string
param logAnalyticsId string
param serviceBusName string
param eventsQueueName string
param enablePrivateNetworking bool

@description('Tenant names (EXCHANGE_TENANTS keys); each becomes a DICOM and a FHIR service.')
param tenantNames array

var dicomDataOwner = '58a3b984-7adf-4c20-983a-32417c86fbc8'
var fhirDataContributor = '5a1fc7df-4bf1-4951-a576-89034ee01acd'
var serviceBusDataSender = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'

var workspaceName = 'hds${resourceToken}'
var publicAccess = enablePrivateNetworking ? 'Disabled' : 'Enabled'

resource workspace 'Microsoft.HealthcareApis/workspaces@2024-03-31' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    publicNetworkAccess: publicAccess
  }
}

// Service names allow letters and digits only: 'trust-a' becomes 'trusta'.
resource dicom 'Microsoft.HealthcareApis/workspaces/dicomservices@2024-03-31' = [for name in tenantNames: {
  parent: workspace
  name: replace(name, '-', '')
  location: location
  tags: tags
  properties: {
    publicNetworkAccess: publicAccess
  }
}]

resource fhir 'Microsoft.HealthcareApis/workspaces/fhirservices@2024-03-31' = [for name in tenantNames: {
  parent: workspace
  name: replace(name, '-', '')
  location: location
  tags: tags
  kind: 'fhir-R4'
  properties: {
    publicNetworkAccess: publicAccess
    authenticationConfiguration: {
      authority: '${environment().authentication.loginEndpoint}${tenant().tenantId}'
      audience: 'https://${workspaceName}-${replace(name, '-', '')}.fhir.azurehealthcareapis.com'
      smartProxyEnabled: false
    }
  }
}]

resource dicomAudit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = [for (name, i) in tenantNames: {
  name: 'audit-to-log-analytics'
  scope: dicom[i]
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      {
        category: 'AuditLogs'
        enabled: true
      }
    ]
  }
}]

resource fhirAudit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = [for (name, i) in tenantNames: {
  name: 'audit-to-log-analytics'
  scope: fhir[i]
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      {
        category: 'AuditLogs'
        enabled: true
      }
    ]
  }
}]

// Each role on its own service: the app may act on every tenant's archive because it
// routes between them; per-tenant access rules are enforced in the code.
resource dicomOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in tenantNames: {
  name: guid(dicom[i].id, appPrincipalId, dicomDataOwner)
  scope: dicom[i]
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dicomDataOwner)
  }
}]

resource fhirContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in tenantNames: {
  name: guid(fhir[i].id, appPrincipalId, fhirDataContributor)
  scope: fhir[i]
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', fhirDataContributor)
  }
}]

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusName
}

resource eventsQueue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' existing = {
  parent: namespace
  name: eventsQueueName
}

resource dicomEvents 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: 'evgt-${workspaceName}'
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: workspace.id
    topicType: 'Microsoft.HealthcareApis.Workspaces'
  }
}

// The topic may send to the events queue and nothing else.
resource topicSends 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventsQueue.id, 'dicom-events-topic', serviceBusDataSender)
  scope: eventsQueue
  properties: {
    principalId: dicomEvents.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSender)
  }
}

// A queue destination needs no webhook handshake, so this exists before the code does.
resource toEventsQueue 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: dicomEvents
  name: 'dicom-to-service-bus'
  dependsOn: [
    topicSends
  ]
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.HealthcareApis.DicomImageCreated'
        'Microsoft.HealthcareApis.DicomImageDeleted'
        'Microsoft.HealthcareApis.DicomImageUpdated'
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    deliveryWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      destination: {
        endpointType: 'ServiceBusQueue'
        properties: {
          resourceId: eventsQueue.id
        }
      }
    }
  }
}

output workspaceId string = workspace.id
output workspaceName string = workspaceName
