import { Elysia } from "elysia";
import { Type } from "@sinclair/typebox";
import type { Bus } from "../bus/connection.ts";
import type { NodeOptions } from "../config/env.ts";
import type { ConfigStore } from "../config/store.ts";
import { ForgetError, forgetUser } from "../pipeline/users/forget.ts";
import { rulesOf } from "../pipeline/users/identity-rules.ts";
import { connectWarehouse, warehouseOptionsOf } from "../sink/clickhouse/server.ts";
import { log } from "../util/log.ts";

type Guard = (request: Request, ip: string | undefined) => Response | undefined;

const n = Type.Integer({ minimum: 0 });
/** The 200 answer of DELETE /v1/users/<id> (src/pipeline/users/forget.ts ForgetReport), for the OpenAPI document. */
export const ForgetAnswer = Type.Object(
  {
    forgotten: Type.Literal(true),
    foundAs: Type.Union([
      Type.Literal("userId"),
      Type.Literal("anonymousId"),
      Type.Literal("property"),
      Type.Literal("nothing"),
    ]),
    profiles: Type.Array(Type.String(), { description: "the profile and those merged into it" }),
    userIds: n,
    anonymousIds: n,
    tombstones: Type.Integer({ minimum: 0, description: "hashed ids whose events every pipeline now drops" }),
    kv: Type.Object({ identities: n, profiles: n, sources: n }),
    rows: Type.Object({ users: n, identities: n, profile_map: n, events: n }),
  },
  {
    examples: [
      {
        forgotten: true,
        foundAs: "property",
        profiles: ["3f9c0d2e-8a51-4c55-9a53-0f6f7f3b9c11"],
        userIds: 1,
        anonymousIds: 2,
        tombstones: 3,
        kv: { identities: 4, profiles: 1, sources: 2 },
        rows: { users: 1, identities: 2, profile_map: 3, events: 4 },
      },
    ],
  },
);

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

/** Forgets run one at a time per node: each waits for its deletes, and two for one user would race. */
let queue: Promise<unknown> = Promise.resolve();

/**
 * DELETE /v1/users/<id> (admin): forgets the user the id leads to (a userId, an anonymousId or an
 * identifier value such as an email), as `npm run forget` does, and answers what was removed. The
 * node's main process has no ClickHouse connection of its own (its pipelines run in worker
 * processes), so each call opens one for its duration.
 */
export function userRoutes(
  config: ConfigStore,
  bus: Bus,
  o: Pick<
    NodeOptions,
    "clickhouseUrl" | "clickhouseUser" | "clickhousePassword" | "clickhouseCluster" | "database" | "streamReplicas"
  >,
  guard: Guard,
  /** Milliseconds between the tombstones and the deletes (forget.ts); tests shorten it. */
  settleMs = 2000,
) {
  const ip = (ctx: { request: Request; server: { requestIP(r: Request): { address: string } | null } | null }) =>
    ctx.server?.requestIP(ctx.request)?.address;
  return new Elysia({ name: "users" }).delete("/v1/users/:id", async (ctx) => {
    const denied = guard(ctx.request, ip(ctx));
    if (denied) return denied;
    const id = decodeURIComponent(ctx.params.id);
    if (!id || Buffer.byteLength(id) > 1024) return json({ error: "the id must be 1 to 1,024 bytes" }, 400);
    if (!o.clickhouseUrl) return json({ error: "this node has no ClickHouse (CLICKHOUSE_URL)" }, 503);
    const run = queue.then(async () => {
      const w = await connectWarehouse(warehouseOptionsOf(o));
      try {
        return await forgetUser(w, bus.js, id, rulesOf(config.current), o.streamReplicas, settleMs);
      } finally {
        await w.close();
      }
    });
    queue = run.catch(() => {});
    try {
      return json({ forgotten: true, ...(await run) });
    } catch (e) {
      if (e instanceof ForgetError) return json({ error: e.message, code: e.code }, e.code === "not_found" ? 404 : 409);
      log.error("forget failed", { error: String((e as Error).message ?? e) });
      return json({ error: `forget failed: ${String((e as Error).message ?? e)}` }, 503);
    }
  });
}
