import { Elysia } from "elysia";
import type { ConfigStore } from "../config/store.ts";
import type { LiveEvent, LiveWindow } from "./live-window.ts";
import type { OutcomeLog } from "./outcomes.ts";
import { pipelineSnapshots, registry, renderMetrics } from "../ops/metrics.ts";

type Guard = (request: Request, ip: string | undefined) => Response | undefined;

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
const PAGE = new URL("./page.html", import.meta.url);

/**
 * The Event debugger and the operator's API (PRODUCT.md §6): every route but the page shell
 * needs the admin token; the page holds no data and asks for the token itself.
 */
export function adminRoutes(config: ConfigStore, live: LiveWindow, outcomes: OutcomeLog, guard: Guard) {
  const guarded =
    <C extends { request: Request; server: { requestIP(r: Request): { address: string } | null } | null }>(
      handler: (ctx: C) => Response | Promise<Response>,
    ) =>
    (ctx: C) =>
      guard(ctx.request, ctx.server?.requestIP(ctx.request)?.address) ?? handler(ctx);

  return new Elysia({ name: "admin" })
    .get(
      "/debugger",
      () =>
        new Response(Bun.file(PAGE), {
          headers: { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" },
        }),
    )
    .get("/debugger/auth", async ({ request, server }) =>
      json(await authMode(guard, request, server?.requestIP(request)?.address ?? undefined)),
    )
    .get("/debugger/:asset", ({ params }) => {
      // Optional static assets next to the page (page.js, page.css); nothing else is served.
      if (!/^page\.(js|css)$/.test(params.asset)) return json({ error: "not found" }, 404);
      const type = params.asset.endsWith(".js") ? "text/javascript" : "text/css";
      return new Response(Bun.file(new URL(`./${params.asset}`, import.meta.url)), {
        headers: { "Content-Type": `${type}; charset=utf-8` },
      });
    })
    .get(
      "/v1/connections",
      guarded(() =>
        json({
          connections: [...config.current.connections.values()].map((c) => ({
            connection: c.connection,
            source: c.source,
            pipelines: (c.pipelines ?? []).map((p) => ({
              name: p.name,
              import: p.import,
              export: p.export,
              enabled: p.enabled !== false,
            })),
          })),
        }),
      ),
    )
    .get(
      "/v1/connections/:connection/events/live",
      guarded(({ request, params, query }: any) =>
        liveStream(live, params.connection, request, Number(query?.sample) || 0),
      ),
    )
    .get(
      "/v1/connections/:connection/events/:messageId",
      guarded(({ params }: any) =>
        json({
          event: live.find(params.connection, params.messageId) ?? null,
          outcomes: outcomes.get(params.connection, params.messageId),
        }),
      ),
    )
    .get(
      "/v1/pipelines",
      guarded(async () => json({ pipelines: await pipelineSnapshots() })),
    )
    .get(
      "/metrics",
      guarded(async () => new Response(await renderMetrics(), { headers: { "Content-Type": registry.contentType } })),
    );
}

/**
 * What the page must do before reading data: `none` when this very request, without any
 * Authorization, would be let in (TRIBUTARY_DEV_ADMIN from loopback), so the page does not ask
 * for a token that does not exist; `required` when the admin token opens the API; `off` with the
 * reason when nothing would (admin API disabled, or a dev-admin request from elsewhere). It tells
 * no more than any admin route's refusal does.
 */
export async function authMode(
  guard: Guard,
  request: Request,
  ip: string | undefined,
): Promise<{ token: "none" | "required" | "off"; error?: string }> {
  const headers = new Headers(request.headers);
  headers.delete("authorization");
  const refused = guard(new Request(request.url, { headers }), ip);
  if (!refused) return { token: "none" };
  if (refused.status === 401) return { token: "required" };
  const body = (await refused.json().catch(() => null)) as { error?: string } | null;
  return { token: "off", error: body?.error ?? "the admin API is not open to this page" };
}

const encoder = new TextEncoder();

/**
 * Bytes of live events one SSE client may have waiting to be sent (on top of the backlog it is
 * greeted with, which the live window bounds). A client that reads slower than events arrive
 * loses the events that do not fit, and is told how many in a `dropped` message once it has
 * caught up; the node never buffers more for it.
 */
export const SSE_CLIENT_BUFFER_BYTES = 1024 * 1024;

/**
 * Server-Sent Events: the last 100 events (or those after Last-Event-ID while it is in the
 * window), then live ones. With `sample=n` at most n events a second reach the client and the
 * rest are counted in `dropped` messages, so a browser stays responsive at any rate. Live events
 * that would take a client's buffer past {@link SSE_CLIENT_BUFFER_BYTES} are dropped too, counted
 * in `overflow` (and in `dropped`) with a `reason`.
 */
function liveStream(live: LiveWindow, connection: string, request: Request, sample: number): Response {
  let unsubscribe = () => {};
  let timer: ReturnType<typeof setInterval> | undefined;
  const stream = new ReadableStream<Uint8Array>(
    {
      start(controller) {
        let closed = false;
        const close = () => {
          closed = true;
          unsubscribe();
          clearInterval(timer);
        };
        /** Whether `bytes` more fit in this client's buffer (what it has not read yet). */
        const room = (bytes: number) => !closed && controller.desiredSize !== null && controller.desiredSize >= bytes;
        const send = (s: string, always = false): boolean => {
          if (closed) return false;
          const bytes = encoder.encode(s);
          if (!always && !room(bytes.byteLength)) return false;
          try {
            controller.enqueue(bytes);
            return true;
          } catch {
            close();
            return false;
          }
        };
        let budget = sample;
        let sampled = 0;
        let overflow = 0;
        let seen = 0;
        const report = (): boolean => {
          if (!sampled && !overflow) return true;
          const body = {
            dropped: sampled + overflow,
            rate: seen,
            ...(overflow && {
              overflow,
              reason: `the client read too slowly: at most ${SSE_CLIENT_BUFFER_BYTES} bytes of events wait for it`,
            }),
          };
          if (!send(`event: dropped\ndata: ${JSON.stringify(body)}\n\n`)) return false;
          sampled = 0;
          overflow = 0;
          seen = 0;
          return true;
        };
        const emit = (events: LiveEvent[]) => {
          for (const e of events) {
            seen++;
            if (sample && budget <= 0) {
              sampled++;
              continue;
            }
            // Say what was lost before the stream goes on, so the gap is where it happened.
            if (overflow && !report()) {
              overflow++;
              continue;
            }
            if (!send(`id: ${e.id}\ndata: ${JSON.stringify(e.event)}\n\n`)) {
              overflow++;
              continue;
            }
            budget--;
          }
        };
        const lastId = request.headers.get("last-event-id");
        const backlog = lastId ? live.after(connection, lastId) : undefined;
        // The greeting and the backlog (bounded by the live window) are always sent.
        send(": tributary live events\n\n", true);
        if (lastId && !backlog)
          send(`event: reset\ndata: {"reason": "Last-Event-ID is no longer in the window"}\n\n`, true);
        for (const e of backlog ?? live.recent(connection, 100))
          send(`id: ${e.id}\ndata: ${JSON.stringify(e.event)}\n\n`, true);
        unsubscribe = live.subscribe(connection, emit);
        let ticks = 0;
        timer = setInterval(() => {
          // A report that does not fit yet keeps counting until it does.
          if (sampled || overflow) report();
          else {
            seen = 0;
            if (++ticks % 15 === 0) send(": keep-alive\n\n");
          }
          budget = sample;
        }, 1000);
        request.signal.addEventListener("abort", close);
      },
      cancel() {
        unsubscribe();
        clearInterval(timer);
      },
    },
    { highWaterMark: SSE_CLIENT_BUFFER_BYTES, size: (chunk) => chunk?.byteLength ?? 0 },
  );
  return new Response(stream, {
    headers: {
      "Content-Type": "text/event-stream",
      "Cache-Control": "no-store",
      Connection: "keep-alive",
      "X-Accel-Buffering": "no",
    },
  });
}
