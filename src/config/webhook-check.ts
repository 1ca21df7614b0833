import type { Connection } from "./schema.ts";

/** The part of a raw connection that says how its requests are authenticated. */
export type CheckConfig = Pick<Connection, "check" | "secret" | "insecure" | "segmentBatchFallback">;

const ALGORITHMS = new Set(["sha1", "sha256", "sha512"]);

/** A secret setting as a list: one string, or several during a rotation. */
export const secretsOf = (s: string | string[] | undefined): string[] =>
  s === undefined ? [] : typeof s === "string" ? [s] : s;

const emptySecrets = (s: string | string[] | undefined) => {
  const list = secretsOf(s);
  return list.length === 0 || list.some((x) => typeof x !== "string" || x.length === 0);
};

/**
 * Why a raw connection's `check` cannot work, or undefined when it can: the configuration's own
 * rule, so the loader refuses the file without knowing how requests are verified
 * (src/ingest/webhooks/check.ts builds the verifier, and refuses the same configurations).
 */
export function webhookCheckProblem(c: CheckConfig): string | undefined {
  const check = c.check;
  if (c.segmentBatchFallback !== undefined && check !== "segment")
    return "segmentBatchFallback: only for check: segment";
  if (check === undefined)
    return c.insecure === true ? undefined : 'check: a raw connection needs "check", or "insecure: true" spelled out';
  if (typeof check === "string") {
    if (!["github", "segment", "stripe"].includes(check)) return `check: unknown preset ${JSON.stringify(check)}`;
    return emptySecrets(c.secret) ? `check: ${check} needs the connection's "secret"` : undefined;
  }
  if ("hmac" in check) {
    const h = check.hmac;
    if (!ALGORITHMS.has(h.algorithm)) return `check.hmac.algorithm: unsupported ${JSON.stringify(h.algorithm)}`;
    if (h.encoding !== "hex" && h.encoding !== "base64")
      return `check.hmac.encoding: unsupported ${JSON.stringify(h.encoding)}`;
    return emptySecrets(h.secret) ? "check.hmac.secret: needs a secret" : undefined;
  }
  return emptySecrets(check.equals) ? "check.equals: needs a value" : undefined;
}
