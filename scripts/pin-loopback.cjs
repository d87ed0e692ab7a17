// Pins every TCP server of a Node process to the loopback address.
//
//   node --require ./scripts/pin-loopback.cjs SCRIPT …
//   NODE_OPTIONS="--require /abs/path/pin-loopback.cjs" some-node-cli …
//
// MCP test peers such as @modelcontextprotocol/server-everything call
// `app.listen(PORT)`, which binds every interface. Tollgate's tests must
// reach nothing but 127.0.0.1, so this preload rewrites the host of every
// `net.Server#listen` (and so of http, https and express servers, which
// inherit it) to 127.0.0.1, whatever host was asked for. Unix sockets, file
// descriptors and handles are left alone. TOLLGATE_PIN_HOST overrides the
// address (another loopback one, e.g. 127.0.0.2).
'use strict';

const net = require('node:net');

const HOST = process.env.TOLLGATE_PIN_HOST || '127.0.0.1';
const listen = net.Server.prototype.listen;

function isPort(v) {
  return typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v));
}

function pinnedListen(...args) {
  if (args.length === 0 || args[0] == null || typeof args[0] === 'function') {
    // listen() / listen(cb) / listen(undefined, …): a random port on every interface.
    if (args.length > 0 && args[0] == null) args.shift();
    args.unshift(0);
  }
  const first = args[0];
  if (first !== null && typeof first === 'object' && !Array.isArray(first)) {
    // listen(options[, cb]); options with `path`, `fd` or `handle` are not TCP.
    if (!('path' in first) && !('fd' in first) && !('handle' in first) && !('_handle' in first)) {
      args[0] = { ...first, host: HOST };
      delete args[0].ipv6Only;
    }
  } else if (isPort(first)) {
    // listen(port[, host][, backlog][, cb])
    if (typeof args[1] === 'string') {
      args[1] = HOST;
    } else {
      args.splice(1, 0, HOST);
    }
  }
  // listen(path…) and listen(handle…) fall through unchanged.
  this.once('listening', () => {
    const a = this.address();
    if (a && typeof a === 'object') {
      process.stderr.write(`pin-loopback: pid ${process.pid} listening on ${a.address}:${a.port}\n`);
    }
  });
  return listen.apply(this, args);
}

net.Server.prototype.listen = pinnedListen;
