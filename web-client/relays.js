// The relays of a cluster, as `welcome` and the engineer's `cluster` message name them.

// A relay's base address (ws(s):// or http(s)://) as a WebSocket address, or null. A page
// loaded over https can only open wss:// ones.
export function relayWsUrl(base) {
  let u;
  try {
    u = new URL(base);
  } catch {
    return null;
  }
  const scheme = { 'ws:': 'ws:', 'http:': 'ws:', 'wss:': 'wss:', 'https:': 'wss:' }[u.protocol];
  if (!scheme || (location.protocol === 'https:' && scheme !== 'wss:')) return null;
  const path = u.pathname.endsWith('/') ? u.pathname + 'ws' : u.pathname;
  return scheme + '//' + u.host + path;
}
