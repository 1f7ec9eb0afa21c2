// A real OpenID provider for the console's end-to-end test: npm
// `oidc-provider` (a certified OP implementation), one confidential client
// that must use the authorization code flow with PKCE (S256), and users who
// sign in with a password on a plain form.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: {"port": N, "client": {"client_id", "client_secret",
// "redirect_uris": [...]}, "users": {"alice": {"password", "email", "name",
// "groups": [...]}}}. The issuer is http://127.0.0.1:N; once it listens, the
// line "issuer http://127.0.0.1:N" is printed. Bound to loopback only.

import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;
const users = config.users;

// A fresh signing key per run (oidc-provider's built-in key is for
// development only and the same everywhere).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const provider = new Provider(issuer, {
  clients: [{
    ...config.client,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingKey] },
  // Signs the provider's own cookies (a tampered one is ignored).
  cookies: { keys: [randomBytes(32).toString('hex')] },
  pkce: { methods: ['S256'], required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  // The console reads who the user is from the id_token alone.
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  // The console is a first-party client: no consent screen.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
  async findAccount(ctx, id) {
    const user = users[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: user.email,
          email_verified: true,
          name: user.name ?? id,
          groups: user.groups ?? [],
        };
      },
    };
  },
  ttl: { IdToken: 3600, AccessToken: 3600, Interaction: 600, Session: 3600, Grant: 3600, AuthorizationCode: 60 },
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>error</title><h1>${escape(out.error)}</h1><p>${escape(out.error_description ?? '')}</p>`;
  },
});

function loginPage(uid, error) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Sign in — test identity provider</title></head>
<body><h1>Test identity provider</h1>${error ? `<p id="error">${escape(error)}</p>` : ''}
<form id="idp-login" method="post" action="/interaction/${escape(uid)}/login">
<label>User <input name="login" id="login" autocomplete="username" autofocus></label>
<label>Password <input name="password" id="password" type="password"></label>
<button type="submit" id="sign-in">Sign in</button></form></body></html>`;
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 10000) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

const handler = provider.callback();
const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, issuer);
  const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!m) return handler(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== m[1]) throw new Error('interaction mismatch');
    if (req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(loginPage(details.uid));
    }
    if (req.method === 'POST' && m[2]) {
      const form = await readForm(req);
      const login = form.get('login') ?? '';
      const user = Object.hasOwn(users, login) ? users[login] : undefined;
      if (!user || user.password !== form.get('password')) {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        return res.end(loginPage(details.uid, 'Wrong user or password.'));
      }
      return await provider.interactionFinished(req, res, { login: { accountId: login } },
        { mergeWithLastSubmission: false });
    }
    res.writeHead(405);
    return res.end();
  } catch (e) {
    console.error(`interaction failed: ${e}`);
    res.writeHead(400, { 'content-type': 'text/plain' });
    return res.end(`interaction failed: ${e.message}`);
  }
});

provider.on('server_error', (ctx, e) => console.error(`server_error: ${e.stack}`));
provider.on('grant.error', (ctx, e) => console.error(`grant.error: ${e.message} ${e.error_description ?? ''}`));
provider.on('authorization.error', (ctx, e) => console.error(`authorization.error: ${e.message} ${e.error_description ?? ''}`));

server.listen(config.port, '127.0.0.1', () => {
  console.log(`issuer ${issuer}`);
});
