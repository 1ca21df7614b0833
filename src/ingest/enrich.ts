import { consentsProblem } from "../event/consent.ts";
import { applyIpPolicy, resolveEventIp, type IpPolicy } from "./ip.ts";
import { normaliseBrowserName, normaliseOsName, parseUserAgent } from "./user-agent.ts";

/**
 * Enrichment and privacy of PRODUCT.md §1, on an event being normalised. The rules follow
 * Krenalis's collector (krenalis/krenalis core/internal/collector/decoder.go, `decodeEvent`,
 * `decodeContext`, `mergeDefaultContext`); where Tributary differs it says so below.
 *
 * A problem throws {@link EnrichError} naming the field; the caller rejects that event only.
 */

export class EnrichError extends Error {
  override name = "EnrichError";
}

export interface EnrichFacts {
  /** The request's address in canonical form (socket, or the first trusted X-Forwarded-For hop). */
  ip?: string;
  /** The connection's `ip` setting. */
  ipPolicy?: IpPolicy;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** Sets a key even when it is `__proto__` (a JSON body may hold one), without touching the prototype. */
function put(o: Record<string, unknown>, k: string, v: unknown): void {
  if (k === "__proto__")
    Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
  else o[k] = v;
}

/**
 * The batch envelope's `context` under the event's own: a key the event has wins, and for a
 * section both hold as objects (`consents`, `app`, `library`...) the event's keys win one by one,
 * so batch-level consents fill in the purposes the event lacks (Krenalis's `mergeDefaultContext`).
 */
export function mergeContext(
  batch: Record<string, unknown>,
  own: Record<string, unknown> | undefined,
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...batch };
  if (own) {
    for (const k of Object.keys(own)) {
      const v = own[k],
        d = out[k];
      put(out, k, isObject(v) && isObject(d) ? { ...d, ...v } : v);
    }
  }
  return out;
}

/** Rounds half away from zero at 2 decimals, on the number as written (1.005 → 1.01). */
function round2(v: number): number {
  // Whole densities (1, 2, 3) are the common case; below 1e13, v × 100 is exact, so they stay as they are.
  if (Number.isInteger(v) && Math.abs(v) < 1e13) return v;
  const s = String(v);
  if (s.includes("e")) return Math.round(v * 100) / 100;
  return Number(Math.round(Number(s + "e2")) + "e-2");
}

const MAX_SCREEN = 32767;

/**
 * `context.screen`: width and height integers in 1–32767 (Krenalis stores them as 16-bit
 * integers), density positive and rounded to 2 decimals (Krenalis's decimal(3,2)). Zero is read
 * as absent and removed, as Krenalis does. Returns the section to store, or throws.
 */
function screenOf(screen: unknown): Record<string, unknown> {
  if (!isObject(screen)) throw new EnrichError(`"context.screen" must be an object`);
  let out = screen;
  const edit = () => (out === screen ? (out = { ...screen }) : out);
  for (const f of ["width", "height"] as const) {
    const v = screen[f];
    if (v === undefined || v === null) continue;
    if (typeof v !== "number" || !Number.isInteger(v))
      throw new EnrichError(`"context.screen.${f}" must be an integer from 1 to ${MAX_SCREEN}`);
    if (v === 0) delete edit()[f];
    else if (v < 1 || v > MAX_SCREEN)
      throw new EnrichError(`"context.screen.${f}" is ${v}, outside the range 1 to ${MAX_SCREEN}`);
  }
  const d = screen.density;
  if (d !== undefined && d !== null) {
    if (typeof d !== "number" || !Number.isFinite(d))
      throw new EnrichError(`"context.screen.density" must be a positive number`);
    if (d < 0) throw new EnrichError(`"context.screen.density" is ${d}; it must be a positive number`);
    const r = round2(d);
    if (r === 0) delete edit().density;
    else if (r !== d) edit().density = r;
  }
  return out;
}

/**
 * `context.sessionId` → `context.session.id` and `context.sessionStart: true` →
 * `context.session.start` (Krenalis's `decodeContext`; analytics SDKs send the flat form). A
 * `session.id` already there wins.
 */
function moveSession(context: Record<string, unknown>): void {
  const id = context.sessionId,
    start = context.sessionStart;
  const hasId = id !== undefined && id !== null;
  if (hasId && (typeof id !== "number" || !Number.isSafeInteger(id)))
    throw new EnrichError(`"context.sessionId" must be an integer`);
  if (start !== undefined && start !== null && typeof start !== "boolean")
    throw new EnrichError(`"context.sessionStart" must be true or false`);
  if (hasId || start === true) {
    const current = context.session;
    if (current !== undefined && current !== null && !isObject(current))
      throw new EnrichError(`"context.session" must be an object`);
    const session: Record<string, unknown> = { ...(current as Record<string, unknown> | undefined) };
    if (hasId && session.id === undefined) session.id = id;
    if (start === true && session.start === undefined) session.start = true;
    context.session = session;
  }
  delete context.sessionId;
  delete context.sessionStart;
}

/** Normalises sent names and fills `browser` / `os` from `userAgent` when the event has none. */
function browserAndOs(context: Record<string, unknown>): void {
  const b = context.browser,
    o = context.os;
  if (isObject(b) && typeof b.name === "string") {
    const name = normaliseBrowserName(b.name);
    if (name !== b.name) context.browser = { ...b, name };
  }
  if (isObject(o) && typeof o.name === "string") {
    const name = normaliseOsName(o.name);
    if (name !== o.name) context.os = { ...o, name };
  }
  const ua = context.userAgent;
  if (typeof ua === "string" && ua !== "" && (b == null || o == null)) {
    const parsed = parseUserAgent(ua);
    if (b == null && parsed.browser) context.browser = { ...parsed.browser };
    if (o == null && parsed.os) context.os = { ...parsed.os };
  }
}

/**
 * Applies enrichment and privacy to `event`, whose `context` (when given) is already a copy the
 * caller owns. Sets `event.context` when an address has to be added to an event without one.
 */
export function enrich(
  event: Record<string, unknown>,
  context: Record<string, unknown> | undefined,
  facts: EnrichFacts,
): void {
  if (context) {
    if (context.consents !== undefined) {
      const problem = consentsProblem(context.consents);
      if (problem) throw new EnrichError(problem);
    }
    if (context.sessionId !== undefined || context.sessionStart !== undefined) moveSession(context);
    if (context.screen !== undefined) context.screen = screenOf(context.screen);
    if (context.userAgent !== undefined || context.browser !== undefined || context.os !== undefined)
      browserAndOs(context);
  }

  // context.ip: the event's own (special values resolved), else the request's; then the connection's policy.
  const sent = context?.ip;
  let ip: string | undefined;
  if (sent === undefined || sent === null || sent === "") ip = facts.ip;
  else if (typeof sent !== "string") throw new EnrichError(`"context.ip" must be a string`);
  else {
    const r = resolveEventIp(sent, facts.ip);
    if ("error" in r) throw new EnrichError(`"context.ip" ${r.error}: ${JSON.stringify(sent.slice(0, 64))}`);
    ip = r.ip;
  }
  ip = applyIpPolicy(ip, facts.ipPolicy);
  if (ip !== undefined) {
    if (!context) event.context = context = {};
    context.ip = ip;
  } else if (context) delete context.ip;

  // Segment's spec puts traits of other calls in context.traits; pipelines (and the default users
  // filter) look at `traits`. Krenalis moves them; Tributary keeps context.traits and copies.
  if (
    event.type !== "identify" &&
    event.type !== "group" &&
    event.traits === undefined &&
    context &&
    isObject(context.traits)
  ) {
    event.traits = { ...context.traits };
  }
}
