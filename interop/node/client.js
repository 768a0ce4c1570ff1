// A proxyless grpc-js client for the language matrix (languages_test.go).
//
//   node client.js
//     Reads one JSON command a line from stdin, {"target": "xds:///…",
//     "calls": N, "timeout_ms": T}, makes N sequential
//     helloworld.Greeter/SayHello calls to target (one channel per target,
//     kept for the process's life), and answers one
//     JSON line: {"replies": {"<reply message>": count}, "errors": n,
//     "first_error": "..."}. It first prints {"grpc": version, "xds": version}.
//   node client.js --check-bootstrap FILE
//     Parses FILE with grpc-js-xds's own bootstrap validator; exits 1 with
//     the parser's error if it refuses the file.
//
// Messages are encoded by hand (one string field, number 1) so the client
// needs no protobuf compiler or loader: only the two pinned packages.
'use strict';
const fs = require('fs');
const readline = require('readline');
const grpc = require('@grpc/grpc-js');
const xds = require('@grpc/grpc-js-xds');

function versions() {
  return {
    grpc: require('@grpc/grpc-js/package.json').version,
    xds: require('@grpc/grpc-js-xds/package.json').version,
    node: process.versions.node,
  };
}

if (process.argv[2] === '--check-bootstrap') {
  const { validateBootstrapConfig } = require('@grpc/grpc-js-xds/build/src/xds-bootstrap');
  try {
    validateBootstrapConfig(JSON.parse(fs.readFileSync(process.argv[3], 'utf8')));
  } catch (e) {
    console.error(e.message);
    process.exit(1);
  }
  console.log(JSON.stringify(versions()));
  process.exit(0);
}

function encodeName(s) {
  const b = Buffer.from(s, 'utf8');
  if (b.length > 127) throw new Error('name too long');
  return Buffer.concat([Buffer.from([0x0a, b.length]), b]);
}

// decodeMessage reads field 1 (a string) of a HelloReply.
function decodeMessage(buf) {
  let i = 0;
  while (i < buf.length) {
    const tag = buf[i++];
    let len = 0, shift = 0, byte;
    do { byte = buf[i++]; len |= (byte & 0x7f) << shift; shift += 7; } while (byte & 0x80);
    if (tag === 0x0a) return buf.subarray(i, i + len).toString('utf8');
    i += len;
  }
  return '';
}

xds.register();
const clients = new Map();

function call(target, timeoutMs) {
  if (!clients.has(target)) clients.set(target, new grpc.Client(target, grpc.credentials.createInsecure()));
  const client = clients.get(target);
  return new Promise((resolve) => {
    client.makeUnaryRequest('/helloworld.Greeter/SayHello', (x) => x, decodeMessage, encodeName('node'),
      new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, msg) => resolve(err ? { err } : { msg }));
  });
}

async function main() {
  console.log(JSON.stringify(versions()));
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    const out = { replies: {}, errors: 0 };
    for (let i = 0; i < cmd.calls; i++) {
      const r = await call(cmd.target, cmd.timeout_ms || 5000);
      if (r.err) {
        out.errors++;
        if (!out.first_error) out.first_error = `${r.err.code}: ${r.err.details}`;
      } else {
        out.replies[r.msg] = (out.replies[r.msg] || 0) + 1;
      }
    }
    console.log(JSON.stringify(out));
  }
  for (const c of clients.values()) c.close();
  // grpc-js-xds's priority policy may still hold a failover timer (up to
  // 10 s) after its channel closed, which keeps the event loop alive.
  process.exit(0);
}

main().catch((e) => { console.error(e); process.exit(1); });
