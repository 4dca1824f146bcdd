// Log Analytics (audit logs of the DICOM and FHIR services, app logs) and Application
// Insights. Ingestion into Application Insights is Entra-only (local auth off): the
// Function App authenticates as its managed identity.

param location string
param tags object
param resourceToken string

@description('Principal id of the Function App identity: publishes telemetry.')
param appPrincipalId string

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    // Audit logs of clinical services: keep them for a year.
    retentionInDays: 365
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    // The instrumentation key in the connection string cannot ingest on its own.
    DisableLocalAuth: true
  }
}

resource publishTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, appPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
  }
}

output logAnalyticsId string = logs.id
output appInsightsName string = appInsights.name
