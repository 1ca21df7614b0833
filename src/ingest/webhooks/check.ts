import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { type CheckConfig, secretsOf, webhookCheckProblem } from "../../config/webhook-check.ts";

/**
 * Request authentication for raw webhooks (PRODUCT.md §2, `check`).
 *
 * Every comparison is constant-time over fixed-length digests, and no error message carries a
 * secret, an expected value or an expected signature: only which header and which rule failed.
 */

/** A request failed its connection's check: answered 401. The message is safe to return to the caller. */
export class WebhookCheckError extends Error {
  override name = "WebhookCheckError";
}

/** A compiled check for one connection. */
export interface WebhookCheck {
  readonly kind: string;
  /**
   * Throws {@link WebhookCheckError} unless the request is authentic.
   * @param body the exact raw request bytes
   * @param now milliseconds since the epoch (default `Date.now()`); only the Stripe replay window uses it
   */
  verify(body: Uint8Array, headers: Headers, now?: number): void;
}

type Algorithm = "sha1" | "sha256" | "sha512";
type Encoding = "hex" | "base64";

/** Stripe's own default replay window (stripe-node `DEFAULT_TOLERANCE`). */
export const STRIPE_DEFAULT_TOLERANCE_SECONDS = 300;

const DIGEST_BYTES: Record<Algorithm, number> = { sha1: 20, sha256: 32, sha512: 64 };

/**
 * Builds the check from a connection's config. Returns undefined only for `insecure: true` without
 * a `check`. Throws a plain Error for a config that cannot work (no check and not insecure, a preset
 * without `secret`, an empty secret, a bad tolerance).
 */
export function compileCheck(
  c: CheckConfig,
  options: { stripeToleranceSeconds?: number } = {},
): WebhookCheck | undefined {
  // The configuration's rule (the loader refuses the same files): past it, every preset has its
  // secrets and every hmac a known algorithm and encoding, so what follows only builds.
  const problem = webhookCheckProblem(c);
  if (problem) throw new Error(problem);
  const check = c.check;
  if (check === undefined) return undefined;
  if (typeof check === "string") {
    const secrets = secretsOf(c.secret);
    switch (check) {
      case "github":
        return hmacCheck(
          "github",
          { header: "X-Hub-Signature-256", algorithm: "sha256", encoding: "hex", prefix: "sha256=" },
          secrets,
        );
      case "segment":
        return segmentCheck(secrets, c.segmentBatchFallback === true);
      case "stripe": {
        const tolerance = options.stripeToleranceSeconds ?? STRIPE_DEFAULT_TOLERANCE_SECONDS;
        if (!Number.isFinite(tolerance) || tolerance <= 0)
          throw new Error("stripe tolerance must be a positive number of seconds");
        return stripeCheck(secrets, tolerance);
      }
      default:
        throw new Error(`check: unknown preset ${JSON.stringify(check satisfies never)}`);
    }
  }
  if ("hmac" in check) {
    const h = check.hmac;
    const secrets = secretsOf(h.secret);
    return hmacCheck(
      "hmac",
      { header: h.header, algorithm: h.algorithm, encoding: h.encoding, prefix: h.prefix },
      secrets,
    );
  }
  return headerCheck(check.header, secretsOf(check.equals));
}

function requireHeader(headers: Headers, name: string): string {
  const v = headers.get(name);
  if (v === null || v === "") throw new WebhookCheckError(`missing ${name} header`);
  return v;
}

/** True when `actual` equals any candidate; visits every candidate (no early exit) with timingSafeEqual. */
function matchesAny(actual: Buffer, candidates: readonly Buffer[]): boolean {
  let ok = false;
  for (const c of candidates) {
    // Lengths here are digest lengths, fixed by the algorithm: comparing them leaks nothing secret.
    const eq = c.length === actual.length && timingSafeEqual(c, actual);
    ok = eq || ok;
  }
  return ok;
}

const HEX = /^[0-9a-fA-F]+$/;
const BASE64 = /^[A-Za-z0-9+/_-]+={0,2}$/;

/** Decodes a signature strictly (Buffer.from alone silently drops bad characters); null when malformed. */
function decodeSignature(s: string, encoding: Encoding, bytes: number): Buffer | null {
  if (encoding === "hex") return s.length === bytes * 2 && HEX.test(s) ? Buffer.from(s, "hex") : null;
  if (!BASE64.test(s)) return null;
  const b = Buffer.from(s, "base64");
  return b.length === bytes ? b : null;
}

function hmac(algorithm: Algorithm, secret: string, ...parts: Uint8Array[]): Buffer {
  const h = createHmac(algorithm, secret);
  for (const p of parts) h.update(p);
  return h.digest();
}

// ---- {header, equals}: shared secret header -----------------------------------------------------

function headerCheck(header: string, values: string[]): WebhookCheck {
  // Compare SHA-256 digests of both sides: equal lengths always, so neither the value nor its
  // length leaks through timing, and every rotated value is tried.
  const sha = (s: string) => createHash("sha256").update(s, "utf8").digest();
  const expected = values.map(sha);
  return {
    kind: "header",
    verify(_body, headers) {
      const got = requireHeader(headers, header);
      if (!matchesAny(sha(got), expected)) throw new WebhookCheckError(`${header} header does not match`);
    },
  };
}

// ---- {hmac: {...}} and the GitHub preset ---------------------------------------------------------

interface HmacSpec {
  header: string;
  algorithm: Algorithm;
  encoding: Encoding;
  prefix?: string;
}

function hmacCheck(kind: string, spec: HmacSpec, secrets: string[]): WebhookCheck {
  const bytes = DIGEST_BYTES[spec.algorithm];
  return {
    kind,
    verify(body, headers) {
      let value = requireHeader(headers, spec.header);
      if (spec.prefix) {
        if (!value.startsWith(spec.prefix))
          throw new WebhookCheckError(`${spec.header} header does not start with "${spec.prefix}"`);
        value = value.slice(spec.prefix.length);
      }
      const got = decodeSignature(value, spec.encoding, bytes);
      if (!got)
        throw new WebhookCheckError(
          `${spec.header} header is not a ${spec.encoding} HMAC-${spec.algorithm.toUpperCase()} signature`,
        );
      if (
        !matchesAny(
          got,
          secrets.map((s) => hmac(spec.algorithm, s, body)),
        )
      )
        throw new WebhookCheckError("signature does not match");
    },
  };
}

// ---- Segment (Webhooks (Actions) destination) ----------------------------------------------------

/**
 * `X-Signature`: hex HMAC-SHA1 with the shared secret — but not always of the body.
 *
 * segmentio/action-destinations, packages/destination-actions/src/destinations/webhook/index.ts,
 * signs in `extendRequest` with
 *   `createHmac('sha1', sharedSecret).update(JSON.stringify(payloadData), 'utf8').digest('hex')`
 * where `payloadData = payload.length ? payload[0]['data'] : payload['data']`. For a single event
 * the body sent is `payload.data` (as JSON), so the signature covers the raw body; for a batch
 * (`performBatch` sends `payload.map(({ data }) => data)`, a JSON array) only the FIRST event is
 * signed. Their own test "supports request signing with batched events" verifies
 * `JSON.stringify(body[0])`, segment-docs PR #6518 documents it for Webhooks, and Twilio support
 * ("How Segment Computes x-signature for Batched Webhooks") confirms it. Materialize's documented
 * Segment check, `hmac(body, secret, 'sha1')` over the whole body, therefore rejects every batched
 * delivery. So: accept a match over the raw body; failing that, and only when the connection opts
 * in with `segmentBatchFallback: true`, when the body is a JSON array, a match over
 * `JSON.stringify(parsed[0])` — JS serialisation, as Segment's is.
 *
 * Why opt-in: for a batch only the first event is authenticated, and nothing in what is signed
 * expires. Anyone who has seen one signed delivery `B` (a single event, or a batch's first) can
 * send `[B, anything…]` with the same `X-Signature`, forever. `X-Segment-Signature` (below) covers
 * the whole body and is the one to use where Segment offers it.
 *
 * A newer revision of the same file adds a `useSegmentSignatureHeader` setting that sends
 * `X-Segment-Signature` instead: HMAC-SHA1 hex over the whole body (all events). When that header
 * is present it is verified over the raw body only, and the first-event fallback is not used.
 */
function segmentCheck(secrets: string[], batchFallback: boolean): WebhookCheck {
  const bytes = DIGEST_BYTES.sha1;
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  return {
    kind: "segment",
    verify(body, headers) {
      const full = headers.get("X-Segment-Signature");
      const header = full ? "X-Segment-Signature" : "X-Signature";
      const got = decodeSignature(requireHeader(headers, header), "hex", bytes);
      if (!got) throw new WebhookCheckError(`${header} header is not a hex HMAC-SHA1 signature`);
      if (
        matchesAny(
          got,
          secrets.map((s) => hmac("sha1", s, body)),
        )
      )
        return;
      if (!full && batchFallback) {
        const first = firstArrayElementJson(body, decoder);
        if (first !== undefined) {
          const signed = encoder.encode(first);
          if (
            matchesAny(
              got,
              secrets.map((s) => hmac("sha1", s, signed)),
            )
          )
            return;
        }
      }
      throw new WebhookCheckError("signature does not match");
    },
  };
}

/** `JSON.stringify(JSON.parse(body)[0])` when the body is a non-empty JSON array, else undefined. */
function firstArrayElementJson(body: Uint8Array, decoder: TextDecoder): string | undefined {
  let i = 0;
  while (i < body.length && (body[i] === 0x20 || body[i] === 0x09 || body[i] === 0x0a || body[i] === 0x0d)) i++;
  if (body[i] !== 0x5b /* [ */) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(decoder.decode(body));
  } catch {
    return undefined;
  }
  if (!Array.isArray(parsed) || parsed.length === 0) return undefined;
  const s: unknown = JSON.stringify(parsed[0]);
  return typeof s === "string" ? s : undefined;
}

// ---- Stripe ----------------------------------------------------------------------------------------

/**
 * `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=…]`; the signed payload is
 * `${t}.${rawBody}` with HMAC-SHA256, hex (Stripe docs, "Verify webhook signatures" / stripe-node
 * `parseHeader`). Any `v1` may match (Stripe sends one per active secret while rolling); other
 * schemes (`v0` is a test-mode scheme) are ignored. A timestamp further than the tolerance from now,
 * either way, is rejected to bound replays.
 */
function stripeCheck(secrets: string[], toleranceSeconds: number): WebhookCheck {
  const name = "Stripe-Signature";
  const bytes = DIGEST_BYTES.sha256;
  const encoder = new TextEncoder();
  return {
    kind: "stripe",
    verify(body, headers, now = Date.now()) {
      const value = requireHeader(headers, name);
      let t: string | undefined;
      const v1: string[] = [];
      for (const item of value.split(",")) {
        const eq = item.indexOf("=");
        if (eq < 0) continue;
        const key = item.slice(0, eq).trim();
        const v = item.slice(eq + 1).trim();
        if (key === "t" && t === undefined) t = v;
        else if (key === "v1") v1.push(v);
      }
      if (t === undefined || !/^\d{1,15}$/.test(t) || v1.length === 0) {
        throw new WebhookCheckError(`malformed ${name} header: expected t=<unix seconds>,v1=<hex signature>`);
      }
      const signedPrefix = encoder.encode(`${t}.`);
      const expected = secrets.map((s) => hmac("sha256", s, signedPrefix, body));
      let ok = false;
      for (const sig of v1) {
        const got = decodeSignature(sig, "hex", bytes);
        // A v1 that is not a SHA-256 hex digest simply matches nothing.
        ok = (got !== null && matchesAny(got, expected)) || ok;
      }
      if (!ok) throw new WebhookCheckError("signature does not match");
      if (Math.abs(now / 1000 - Number(t)) > toleranceSeconds) {
        throw new WebhookCheckError(`timestamp outside the ${toleranceSeconds} s tolerance`);
      }
    },
  };
}
