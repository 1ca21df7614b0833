/**
 * Consent (PRODUCT.md §1 "Enrichment and privacy"): `context.consents` is an object of purpose →
 * boolean. A `/v1/batch` envelope's `context.consents` fills in the purposes an event lacks (the
 * per-section merge of Krenalis's `mergeDefaultContext`, krenalis/krenalis
 * core/internal/collector/decoder.go); a pipeline may require purposes (`consents: [analytics]`).
 */

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** `undefined` when `value` is a valid `context.consents`, else the problem, naming the field. */
export function consentsProblem(value: unknown): string | undefined {
  if (!isObject(value)) return `"context.consents" must be an object of purpose → true or false`;
  for (const purpose in value) {
    if (typeof value[purpose] !== "boolean") return `"context.consents.${purpose}" must be true or false`;
  }
  return undefined;
}

/**
 * Whether an event may go to a pipeline that requires `purposes`: every one of them must be
 * `true` in the event's `context.consents`. A pipeline that requires nothing takes every event;
 * a purpose that is missing, `false` or anything but `true` fails.
 */
export function consentGranted(event: Record<string, unknown>, purposes: string[] | undefined): boolean {
  if (!purposes || purposes.length === 0) return true;
  const context = event.context;
  if (!isObject(context)) return false;
  const consents = context.consents;
  if (!isObject(consents)) return false;
  for (const p of purposes) if (consents[p] !== true) return false;
  return true;
}
