// The private networking option: a VNet with a subnet for the Function App's outbound
// traffic (VNet integration) and one for private endpoints to Storage, Service Bus,
// Cosmos DB, Key Vault and the Health Data Services workspace, with their DNS zones.

param location string
param tags object
param resourceToken string
param addressPrefix string = '10.40.0.0/16'
param appSubnetPrefix string = '10.40.0.0/24'
param endpointSubnetPrefix string = '10.40.1.0/24'

@description('Private endpoint targets: { name, id, groupId, zones: [zone names] }.')
param targets array

var zoneNames = [
  'privatelink.blob.${environment().suffixes.storage}'
  'privatelink.queue.${environment().suffixes.storage}'
  'privatelink.servicebus.windows.net'
  'privatelink.documents.azure.com'
  'privatelink.vaultcore.azure.net'
  'privatelink.azurehealthcareapis.com'
  'privatelink.dicom.azurehealthcareapis.com'
]

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  name: 'vnet-${resourceToken}'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'app'
        properties: {
          addressPrefix: appSubnetPrefix
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: endpointSubnetPrefix
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

resource zones 'Microsoft.Network/privateDnsZones@2020-06-01' = [for zone in zoneNames: {
  name: zone
  location: 'global'
  tags: tags
}]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [for (zone, i) in zoneNames: {
  parent: zones[i]
  name: 'link-${vnet.name}'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}]

resource endpoints 'Microsoft.Network/privateEndpoints@2023-11-01' = [for target in targets: {
  name: 'pe-${target.name}-${resourceToken}'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: '${vnet.id}/subnets/private-endpoints'
    }
    privateLinkServiceConnections: [
      {
        name: target.name
        properties: {
          privateLinkServiceId: target.id
          groupIds: [
            target.groupId
          ]
        }
      }
    ]
  }
}]

resource endpointDns 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2023-11-01' = [for (target, i) in targets: {
  parent: endpoints[i]
  name: 'default'
  dependsOn: [
    zones
  ]
  properties: {
    privateDnsZoneConfigs: [for zone in target.zones: {
      name: replace(zone, '.', '-')
      properties: {
        privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', zone)
      }
    }]
  }
}]

output appSubnetId string = '${vnet.id}/subnets/app'
