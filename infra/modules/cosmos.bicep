// Cosmos DB (NoSQL): the state store. Every container is partitioned on /pk, as
// shared_code/adapters/state_cosmos.py expects (PARTITION_KEY_PATH). Keys are off; the
// app gets the built-in data contributor role on its database only.

param location string
param tags object
param resourceToken string
param appPrincipalId string
param databaseName string
param serverless bool
param enablePrivateNetworking bool

@description('Throughput of the shared database when not serverless (RU/s, autoscale max).')
param autoscaleMaxThroughput int = 1000

// The containers the services use through the StateStore port (docs/ARCHITECTURE.md);
// tests/infra checks this list against the code.
var containerNames = [
  'audit'
  'uploads'
  'instances'
  'shares'
  'locks'
  'fhir_sync'
  'checkpoints'
]

// Cosmos DB Built-in Data Contributor (a data-plane role of the account).
var cosmosDataContributor = '00000000-0000-0000-0000-000000000002'

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' = {
  name: 'cosmos-${resourceToken}'
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    // checkov:skip=CKV_AZURE_99: public network access is the default so that azd runs from a laptop; enablePrivateNetworking turns it off.
    // checkov:skip=CKV_AZURE_101: public network access is on by default (no VNet needed to try it); enablePrivateNetworking disables it.
    databaseAccountOfferType: 'Standard'
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    capabilities: serverless ? [
      {
        name: 'EnableServerless'
      }
    ] : []
    disableLocalAuth: true
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    publicNetworkAccess: enablePrivateNetworking ? 'Disabled' : 'Enabled'
    backupPolicy: {
      type: 'Continuous'
      continuousModeProperties: {
        tier: 'Continuous7Days'
      }
    }
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-05-15' = {
  parent: account
  name: databaseName
  properties: {
    resource: {
      id: databaseName
    }
    options: serverless ? {} : {
      autoscaleSettings: {
        maxThroughput: autoscaleMaxThroughput
      }
    }
  }
}

resource container 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = [for name in containerNames: {
  parent: database
  name: name
  properties: {
    resource: {
      id: name
      partitionKey: {
        paths: [
          '/pk'
        ]
        kind: 'Hash'
      }
    }
  }
}]

// Data-plane RBAC lives on the account, scoped here to the app's database.
resource dataContributor 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = {
  parent: account
  name: guid(account.id, appPrincipalId, cosmosDataContributor)
  properties: {
    principalId: appPrincipalId
    roleDefinitionId: '${account.id}/sqlRoleDefinitions/${cosmosDataContributor}'
    scope: '${account.id}/dbs/${databaseName}'
  }
}

output id string = account.id
output endpoint string = account.properties.documentEndpoint
