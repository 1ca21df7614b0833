// The machine's ceiling for bench/ingest.ts: a bare Bun.serve that only reads and parses the
// JSON body and answers, in its own process like the node. Prints {"port"} when listening and
// answers {"rss"...} over IPC when asked.
const server = Bun.serve({
  port: 0,
  hostname: "127.0.0.1",
  maxRequestBodySize: 64 * 1024 * 1024,
  async fetch(req) {
    const body = JSON.parse(await req.text()) as unknown;
    return Response.json({ accepted: Array.isArray(body) ? body.length : 1 });
  },
});
process.on("message", () => process.send?.({ memory: process.memoryUsage() }));
console.log(JSON.stringify({ port: server.port }));
