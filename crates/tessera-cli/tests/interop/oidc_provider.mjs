// An outside OpenID Connect provider for the console's sign-in test: node-oidc-provider (the
// certified implementation from npm) with its development login pages. Any login name signs
// in; the name picks the groups: `alice` is in `platform-admins`, `bob` in `engineering`,
// anyone else in none.
//
//   node oidc_provider.mjs PORT REDIRECT_URI CLIENT_SECRET
// Prints `ready` once it listens on 127.0.0.1:PORT. Finds oidc-provider under `npm root -g`
// (NODE_GLOBAL_ROOT).
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [port, redirect, secret] = process.argv.slice(2);
const root = process.env.NODE_GLOBAL_ROOT;
const { default: Provider } = await import(pathToFileURL(join(root, 'oidc-provider', 'lib', 'index.js')).href);

const GROUPS = { alice: ['platform-admins'], bob: ['engineering'] };

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'tessera-console',
    client_secret: secret,
    redirect_uris: [redirect],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true, methods: ['S256'] },
  scopes: ['openid', 'profile', 'groups'],
  claims: { openid: ['sub'], profile: ['preferred_username'], groups: ['groups'] },
  conformIdTokenClaims: false,
  findAccount: async (_ctx, id) => ({
    accountId: id,
    async claims() { return { sub: id, preferred_username: id, groups: GROUPS[id] || [] }; },
  }),
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['a test key, not a secret'] },
});
provider.listen(Number(port), '127.0.0.1', () => { console.log('ready'); });
