// node-oidc-provider 9.x configured like Tessera's issuance path: client_credentials,
// client_secret_basic, ES256 JWT access tokens (RFC 9068) for a resource indicator, in-memory
// adapter (the default). Prints `peer: ready url=...` when listening.
import { generateKeyPair } from 'node:crypto';
import { promisify } from 'node:util';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 0);
const { privateKey } = await promisify(generateKeyPair)('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'bench' };

const RESOURCE = 'spiffe://example.org/prod/inventory-api';
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'orders',
    client_secret: 'orders-secret-orders-secret-orders-secret-1234',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'ES256',
  }],
  jwks: { keys: [jwk] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'inventory:read inventory:reserve',
        audience: RESOURCE,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.on('server_error', (ctx, err) => console.error(err));
const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`peer: ready url=http://127.0.0.1:${server.address().port}`);
});
