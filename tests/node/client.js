// A gRPC client that is not ours: Node's grpc-js (strict about the server name)
// with the protos loaded at run time. Usage:
//   node client.js PROTO_DIR HOST:PORT CA CERT KEY KEY_NAME DIGEST_HEX
// Prints one JSON line: the keys listed and the request created.
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [protoDir, target, ca, cert, key, keyName, digestHex] = process.argv.slice(2);
const def = loader.loadSync(path.join(protoDir, "signer/v1/signing.proto"), {
  includeDirs: [protoDir], keepCase: false, longs: String, enums: String, defaults: true,
});
const pkg = grpc.loadPackageDefinition(def).signer.v1;
const creds = grpc.credentials.createSsl(
  fs.readFileSync(ca), fs.readFileSync(key), fs.readFileSync(cert));
const client = new pkg.SigningService(target, creds);
const deadline = () => new Date(Date.now() + 10000);

client.listKeys({}, { deadline: deadline() }, (err, keys) => {
  if (err) { console.error(err.code, err.details); process.exit(1); }
  const request = {
    keyName, digests: [{ algorithm: "HASH_ALGORITHM_SHA256",
      value: Buffer.from(digestHex, "hex"), artifactName: "from-node.bin" }],
    context: { client: "grpc-js" }, idempotencyKey: "node-" + digestHex.slice(0, 16),
  };
  client.createSigningRequest(request, { deadline: deadline() }, (err2, created) => {
    if (err2) { console.error(err2.code, err2.details); process.exit(1); }
    console.log(JSON.stringify({ keys: keys.keys.map((k) => k.name), request: created.request }));
    client.close();
  });
});
