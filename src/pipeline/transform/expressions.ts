import { compileExpression, ExpressionTimeoutError, type Expression, withTimeLimit } from "../../expr/index.ts";
import type { SandboxedTransform, TransformResult } from "./types.ts";

const message = (e: unknown) => {
  const x = e as { code?: string; message?: string };
  return `${x.code ? x.code + ": " : ""}${x.message ?? String(e)}`;
};

/** A failure that used up the event's time. */
class OutOfTime {
  constructor(readonly error: string) {}
}

/**
 * `one` on each event, each within the expression time limit (one budget per event, however many
 * expressions it runs). An event that ran out of time held the main thread for the whole limit, so
 * before the next one the node answers what queued up meanwhile (health checks, ingestion).
 */
async function eachEvent(
  events: unknown[],
  one: (event: unknown) => TransformResult | OutOfTime,
): Promise<TransformResult[]> {
  const out: TransformResult[] = [];
  for (const event of events) {
    let r: TransformResult | OutOfTime;
    try {
      r = withTimeLimit(() => one(event));
    } catch (err) {
      r = err instanceof ExpressionTimeoutError ? new OutOfTime(message(err)) : { ok: false, error: message(err) };
    }
    if (r instanceof OutOfTime) {
      out.push({ ok: false, error: r.error });
      await new Promise((resolve) => setImmediate(resolve));
    } else out.push(r);
  }
  return out;
}

/** `mapping`: Customer Model property → JSONata expression (the visual-mapping model). Undefined leaves a property unassigned. */
export function mappingTransform(mapping: Record<string, string>): SandboxedTransform {
  const compiled: [string, Expression][] = Object.entries(mapping).map(([k, expr]) => [k, compileExpression(expr)]);
  return {
    transformBatch(events) {
      return eachEvent(events, (event) => {
        // Entries, not assignments: a property named "__proto__" must stay a plain key.
        const entries: [string, unknown][] = [];
        for (const [property, e] of compiled) {
          let v: unknown;
          try {
            v = e.evaluate(event);
          } catch (err) {
            const error = `mapping of "${property}": ${message(err)}`;
            return err instanceof ExpressionTimeoutError ? new OutOfTime(error) : { ok: false, error };
          }
          if (v !== undefined) entries.push([property, v]);
        }
        return { ok: true, value: Object.fromEntries(entries) };
      });
    },
    dispose() {},
  };
}

/** `jsonata`: one expression returning the properties object. */
export function jsonataTransform(expr: string): SandboxedTransform {
  const e = compileExpression(expr);
  return {
    transformBatch(events) {
      return eachEvent(events, (event) => ({ ok: true, value: e.evaluate(event) }));
    },
    dispose() {},
  };
}
