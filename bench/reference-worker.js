// The floor the edge is compared against (scripts/bench): the least a worker can do
// per request, in plain JavaScript. `/public/*` is forwarded to the upstream as is;
// `/api/*` first reads three keys from the store over Upstash REST, as the edge's
// session check does, without any verification. Their throughput ratio is what one
// store round trip per request costs in workerd on this machine.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname.startsWith("/api/")) {
      const reply = await fetch(env.UPSTASH_URL, {
        method: "POST",
        headers: { authorization: `Bearer ${env.UPSTASH_TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify(["MGET", "ref:sess:a:b", "ref:nbf:a", "ref:epoch"]),
        signal: AbortSignal.timeout(1000),
      });
      await reply.json();
    }
    return fetch(env.UPSTREAM_URL + url.pathname, { headers: request.headers });
  },
};
