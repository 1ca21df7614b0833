import { Elysia } from "elysia";
import { Type } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import type { ConfigStore } from "../config/store.ts";
import type { Pipelines } from "../pipeline/host/pipelines.ts";
import type { ReplayProgress } from "../pipeline/replay.ts";
import { log } from "../util/log.ts";

type Guard = (request: Request, ip: string | undefined) => Response | undefined;

export const ReplayRequest = Type.Object(
  {
    connection: Type.Optional(
      Type.String({ description: "needed when several connections have a pipeline of that name" }),
    ),
    since: Type.Optional(Type.String({ description: "ISO 8601: start at messages stored at or after this time" })),
    fromSeq: Type.Optional(Type.Integer({ minimum: 1, description: "or start at this stream sequence" })),
    partition: Type.Optional(
      Type.Integer({ minimum: 0, description: "only this partition's stream (needed by fromSeq with several)" }),
    ),
    until: Type.Optional(Type.String({ description: "ISO 8601: stop at messages stored after this time" })),
    dryRun: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false, examples: [{ connection: "website", since: "2026-11-20T00:00:00Z" }] },
);
const check = TypeCompiler.Compile(ReplayRequest);

interface Job {
  id: string;
  connection: string;
  pipeline: string;
  startedAt: string;
  progress?: ReplayProgress;
  error?: string;
}

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

/**
 * POST /v1/pipelines/<name>/replay starts a replay in this node, where its pipelines run (a worker
 * process by default); GET /v1/replays follows them.
 */
export function replayRoutes(config: ConfigStore, pipelines: () => Pipelines | undefined, guard: Guard) {
  const jobs = new Map<string, Job>();
  const ip = (ctx: { request: Request; server: { requestIP(r: Request): { address: string } | null } | null }) =>
    ctx.server?.requestIP(ctx.request)?.address;
  return new Elysia({ name: "replay" })
    .post(
      "/v1/pipelines/:name/replay",
      async (ctx) => {
        const denied = guard(ctx.request, ip(ctx));
        if (denied) return denied;
        let body: unknown = {};
        const text = await ctx.request.text();
        if (text.trim()) {
          try {
            body = JSON.parse(text);
          } catch (e) {
            return json({ error: `invalid JSON: ${(e as Error).message}` }, 400);
          }
        }
        if (!check.Check(body)) {
          const e = check.Errors(body).First()!;
          return json({ error: `${e.path || "body"}: ${e.message}` }, 400);
        }
        for (const f of ["since", "until"] as const) {
          if (body[f] !== undefined && Number.isNaN(Date.parse(body[f]!)))
            return json({ error: `${f}: not an ISO 8601 time: ${body[f]}` }, 400);
        }
        const name = decodeURIComponent(ctx.params.name);
        const owners = [...config.current.connections.values()].filter(
          (c) => c.pipelines?.some((p) => p.name === name) && (!body.connection || c.connection === body.connection),
        );
        if (!owners.length)
          return json(
            { error: `no pipeline named "${name}"${body.connection ? ` on connection "${body.connection}"` : ""}` },
            404,
          );
        if (owners.length > 1)
          return json(
            { error: `several connections have a pipeline named "${name}": say which with "connection"` },
            400,
          );
        const p = pipelines();
        if (!p || !(await p.warehouseUp())) return json({ error: "ClickHouse is not reachable yet; retry later" }, 503);
        const job: Job = {
          id: crypto.randomUUID(),
          connection: owners[0]!.connection,
          pipeline: name,
          startedAt: new Date().toISOString(),
        };
        jobs.set(job.id, job);
        p.replay({ ...body, connection: job.connection, pipeline: name }, (progress) => (job.progress = progress))
          .then((p) => (job.progress = p))
          .catch((e) => {
            job.error = String((e as Error).message ?? e);
            log.error("replay failed", { replay: job.id, error: job.error });
          });
        return json({ id: job.id, status: `/v1/replays/${job.id}` }, 202);
      },
      { parse: "none" },
    )
    .get("/v1/replays", (ctx) => guard(ctx.request, ip(ctx)) ?? json({ replays: [...jobs.values()] }))
    .get("/v1/replays/:id", (ctx) => {
      const denied = guard(ctx.request, ip(ctx));
      if (denied) return denied;
      const job = jobs.get(ctx.params.id);
      return job ? json(job) : json({ error: "no such replay" }, 404);
    });
}
