// The Function App's user-assigned managed identity: every role is granted to it, and
// every identity-based connection names its client id.

param location string
param tags object
param resourceToken string

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-func-${resourceToken}'
  location: location
  tags: tags
}

output id string = identity.id
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
