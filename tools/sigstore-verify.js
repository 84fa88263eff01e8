// Verifies a Sigstore bundle (v0.3, message signature) over an artifact with a pinned
// public key, using @sigstore/verify, the verifier sigstore-js clients use. No
// transparency log or timestamp is required: the trust material is the key alone.
// Usage: node tools/sigstore-verify.js BUNDLE ARTIFACT PUBLIC_KEY_PEM
'use strict';
const fs = require('fs');
const crypto = require('crypto');
const { bundleFromJSON } = require('@sigstore/bundle');
const { Verifier, toSignedEntity } = require('@sigstore/verify');

const [bundlePath, artifactPath, keyPath] = process.argv.slice(2);
const key = crypto.createPublicKey(fs.readFileSync(keyPath));
const trust = {
  certificateAuthorities: [],
  timestampAuthorities: [],
  tlogs: [],
  ctlogs: [],
  publicKey: () => ({ publicKey: key, validFor: () => true }),
};
try {
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
  const verifier = new Verifier(trust, { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 });
  verifier.verify(toSignedEntity(bundle, fs.readFileSync(artifactPath)));
  console.log('Verified OK');
} catch (e) {
  console.error('Verification FAILED: ' + e.message);
  process.exit(1);
}
