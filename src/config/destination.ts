import { Type, type Static, type TLiteral } from "@sinclair/typebox";

/**
 * An export pipeline's `destination`: the schema (published in docs/configuration.md), its defaults
 * and the rules a schema cannot say, all here. The sinks (src/sink/webhook, src/sink/segment) take
 * the resolved `DestinationOptions`, never the raw YAML.
 */

const Value = <T extends string>(value: T, description: string): TLiteral<T> => Type.Literal(value, { description });

/** A size: a byte count, or text such as `512KiB`, `1MiB`, `1MB`. */
const Size = (description: string, example: string | number) =>
  Type.Union(
    [Type.Integer({ minimum: 1 }), Type.String({ pattern: "^\\s*\\d+(\\.\\d+)?\\s*(B|KB|KiB|MB|MiB)?\\s*$" })],
    {
      description: `${description} A number of bytes, or text with a unit: \`B\`, \`KB\`/\`MB\` (1000s), \`KiB\`/\`MiB\` (1024s).`,
      examples: [example],
    },
  );

export const Destination = Type.Object(
  {
    type: Type.Union(
      [
        Value("webhook", "Any HTTP endpoint: the events (or their `transform` output) in the body, as `format` says."),
        Value(
          "segment",
          "The Segment HTTP Tracking API: `POST {url}/v1/batch` with `{batch: [...]}` and Basic auth with `writeKey`. Segment itself, a RudderStack data plane, or another Tributary node.",
        ),
      ],
      { description: "What kind of receiver the events go to." },
    ),
    url: Type.String({
      pattern: "^https?://[^\\s]+$",
      description:
        "`http://` or `https://` URL. For `webhook`, where each request goes; for `segment`, the API's base URL (`/v1/batch` is appended).",
      examples: ["https://crm.example.com/hooks/events"],
    }),
    method: Type.Optional(
      Type.Union([Value("POST", "POST"), Value("PUT", "PUT"), Value("PATCH", "PATCH")], {
        default: "POST",
        description: "`webhook` only: the HTTP method.",
      }),
    ),
    headers: Type.Optional(
      Type.Record(Type.String({ pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$" }), Type.String(), {
        description:
          'Extra request headers. Write `"${NAME}"` to take a value from the environment. Never logged nor shown by `/v1/pipelines`.',
        examples: [{ "X-Api-Key": "${CRM_KEY}" }],
      }),
    ),
    writeKey: Type.Optional(
      Type.String({
        minLength: 1,
        description: "`segment` only, and required there: the receiving source's write key (Basic auth user name).",
        examples: ["${SEGMENT_WRITE_KEY}"],
      }),
    ),
    batch: Type.Optional(
      Type.Object(
        {
          maxEvents: Type.Optional(
            Type.Integer({
              minimum: 1,
              maximum: 100_000,
              default: 500,
              description: "A request carries at most this many events (`1`: one event per request).",
            }),
          ),
          maxBytes: Type.Optional(
            Size(
              "A request body is at most this big (an event larger than this goes alone). Default: `1MiB` (`segment`: `500KB`, Segment's limit).",
              "1MiB",
            ),
          ),
          maxAgeMs: Type.Optional(
            Type.Integer({
              minimum: 0,
              maximum: 60_000,
              default: 200,
              description: "A request leaves at the latest this long after its first event was ready.",
            }),
          ),
        },
        {
          additionalProperties: false,
          description: "How events are grouped into requests (the first limit reached sends).",
        },
      ),
    ),
    format: Type.Optional(
      Type.Union(
        [
          Value("json-array", "A JSON array of the events."),
          Value("ndjson", "One JSON event per line (`application/x-ndjson`)."),
          Value("single", "One JSON event per request; needs `batch.maxEvents: 1` (the default then)."),
        ],
        { default: "json-array", description: "`webhook` only: the body's shape." },
      ),
    ),
    signing: Type.Optional(
      Type.Object(
        {
          secret: Type.String({
            minLength: 1,
            description: 'The HMAC key; write `"${NAME}"` to take it from the environment.',
            examples: ["${CRM_SIGNING_SECRET}"],
          }),
          header: Type.Optional(
            Type.String({
              pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
              default: "X-Tributary-Signature",
              description: "The header carrying the signature: hex HMAC-SHA256 of `<timestamp>.<body>`.",
            }),
          ),
        },
        {
          additionalProperties: false,
          description:
            "Signs each request: the Unix time in seconds goes in `X-Tributary-Timestamp`, and the hex HMAC-SHA256 of `<timestamp>.<body>` in `header`. Receivers recompute it and refuse old timestamps (see the README's Destinations section).",
        },
      ),
    ),
    timeoutMs: Type.Optional(
      Type.Integer({
        minimum: 100,
        maximum: 600_000,
        default: 10_000,
        description: "A request without an answer after this long is abandoned and retried.",
      }),
    ),
    maxInFlight: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 256,
        default: 4,
        description:
          "Requests under way at once. Each user's events are in at most one of them, so users proceed in parallel and each user's events in order.",
      }),
    ),
    rateLimit: Type.Optional(
      Type.Object(
        {
          requestsPerSecond: Type.Number({
            exclusiveMinimum: 0,
            description: "Requests (retries included) per second, at most, from the sending node.",
            examples: [50],
          }),
        },
        { additionalProperties: false, description: "Absent: no limit but `maxInFlight`." },
      ),
    ),
    retry: Type.Optional(
      Type.Object(
        {
          initialBackoffMs: Type.Optional(
            Type.Integer({ minimum: 1, default: 100, description: "Wait before the first retry; doubles each time." }),
          ),
          maxBackoffMs: Type.Optional(
            Type.Integer({
              minimum: 1,
              default: 5000,
              description: "The longest wait between retries (before jitter).",
            }),
          ),
          maxRetryAfterMs: Type.Optional(
            Type.Integer({
              minimum: 0,
              default: 60_000,
              description: "A `Retry-After` asking for longer is capped to this.",
            }),
          ),
        },
        {
          additionalProperties: false,
          description:
            "408, 429, 5xx, timeouts and connection errors are retried for as long as it takes, with capped exponential backoff and full jitter, honouring `Retry-After`.",
        },
      ),
    ),
    maxQueuedEvents: Type.Optional(
      Type.Integer({
        minimum: 1,
        default: 10_000,
        description:
          "Events held in memory waiting for the destination; past it the pipeline stops reading the stream (events wait there, and lag shows on `/v1/pipelines`).",
      }),
    ),
  },
  {
    additionalProperties: false,
    description: "`export` only, and required there: where the events go.",
  },
);
export type Destination = Static<typeof Destination>;

/** A destination with every default applied and every size in bytes: what the sinks take. */
export interface DestinationOptions {
  type: "webhook" | "segment";
  url: string;
  method: "POST" | "PUT" | "PATCH";
  headers: Record<string, string>;
  writeKey?: string;
  maxEvents: number;
  maxBytes: number;
  maxAgeMs: number;
  format: "json-array" | "ndjson" | "single";
  signing?: { secret: string; header: string };
  timeoutMs: number;
  maxInFlight: number;
  requestsPerSecond?: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  maxRetryAfterMs: number;
  maxQueuedEvents: number;
}

const UNITS: Record<string, number> = { B: 1, KB: 1000, KIB: 1024, MB: 1000 ** 2, MIB: 1024 ** 2 };

/** `1MiB` → 1048576; a number stays. Throws on text the schema would refuse. */
export function parseSize(v: number | string): number {
  if (typeof v === "number") return v;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB)?\s*$/.exec(v);
  if (!m) throw new Error(`not a size: ${v}`);
  return Math.floor(Number(m[1]) * UNITS[(m[2] ?? "B").toUpperCase()]!);
}

/** The rules the schema cannot express; each names the field (under `destination`). */
export function destinationProblems(d: Destination): { path: string; message: string }[] {
  const out: { path: string; message: string }[] = [];
  if (d.type === "segment" && !d.writeKey) out.push({ path: "", message: "type: segment needs a writeKey" });
  if (d.type !== "segment" && d.writeKey) out.push({ path: "/writeKey", message: "writeKey is for type: segment" });
  if (d.type === "segment" && d.format && d.format !== "json-array")
    out.push({ path: "/format", message: "type: segment always sends {batch: [...]}; format is for webhooks" });
  if (d.type === "segment" && d.method && d.method !== "POST")
    out.push({ path: "/method", message: "type: segment always POSTs" });
  if (d.format === "single" && d.batch?.maxEvents !== undefined && d.batch.maxEvents !== 1)
    out.push({ path: "/batch/maxEvents", message: "format: single sends one event per request: maxEvents must be 1" });
  if (d.batch?.maxBytes !== undefined && parseSize(d.batch.maxBytes) < 1)
    out.push({ path: "/batch/maxBytes", message: "must be at least 1 byte" });
  if ((d.retry?.initialBackoffMs ?? 100) > (d.retry?.maxBackoffMs ?? 5000))
    out.push({ path: "/retry/initialBackoffMs", message: "must not exceed maxBackoffMs" });
  return out;
}

/** Defaults applied, in one place. */
export function resolveDestination(d: Destination): DestinationOptions {
  const segment = d.type === "segment";
  const format = segment ? "json-array" : (d.format ?? "json-array");
  return {
    type: d.type,
    url: d.url,
    method: segment ? "POST" : (d.method ?? "POST"),
    headers: { ...(d.headers ?? {}) },
    writeKey: d.writeKey,
    maxEvents: d.batch?.maxEvents ?? (format === "single" ? 1 : 500),
    maxBytes: d.batch?.maxBytes !== undefined ? parseSize(d.batch.maxBytes) : segment ? 500_000 : 1024 ** 2,
    maxAgeMs: d.batch?.maxAgeMs ?? 200,
    format,
    signing: d.signing ? { secret: d.signing.secret, header: d.signing.header ?? "X-Tributary-Signature" } : undefined,
    timeoutMs: d.timeoutMs ?? 10_000,
    maxInFlight: d.maxInFlight ?? 4,
    requestsPerSecond: d.rateLimit?.requestsPerSecond,
    initialBackoffMs: d.retry?.initialBackoffMs ?? 100,
    maxBackoffMs: d.retry?.maxBackoffMs ?? 5000,
    maxRetryAfterMs: d.retry?.maxRetryAfterMs ?? 60_000,
    maxQueuedEvents: d.maxQueuedEvents ?? 10_000,
  };
}

/** What /v1/pipelines may show of a destination: never its headers' values, write key or secret. */
export function describeDestination(d: DestinationOptions): { type: string; url: string } {
  let url = d.url;
  try {
    const u = new URL(d.url);
    // Credentials in a URL are secrets too; a query string may hold a token.
    u.username = "";
    u.password = "";
    u.search = "";
    url = u.toString();
  } catch {}
  return { type: d.type, url };
}
