// Key Vault for the pseudonymisation keys (one secret per tenant, named
// pseudonym-key-<tenant>). RBAC only; the app reads secrets, the deploying user (azd)
// may set them so that infra/hooks/postprovision.sh can create missing keys.

param location string
param tags object
param resourceToken string
param appPrincipalId string
param enablePrivateNetworking bool

@description('Object id of the user running azd (empty: no role for them).')
param deployerPrincipalId string = ''

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv-${resourceToken}'
  location: location
  tags: tags
  properties: {
    // checkov:skip=CKV_AZURE_109: the firewall denies by default only with enablePrivateNetworking; otherwise azd's hook must reach the vault from a laptop.
    // checkov:skip=CKV_AZURE_189: public network access is on by default so that azd's hook can set keys from a laptop; enablePrivateNetworking disables it.
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // A lost pseudonymisation key breaks linkage of research data: never purge early.
    enablePurgeProtection: true
    publicNetworkAccess: enablePrivateNetworking ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: enablePrivateNetworking ? 'Deny' : 'Allow'
    }
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

resource secretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(vault.id, deployerPrincipalId, keyVaultSecretsOfficer)
  scope: vault
  properties: {
    principalId: deployerPrincipalId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficer)
  }
}

output id string = vault.id
output name string = vault.name
