import { compileJsonata, type CompiledJsonata } from "./jsonata/index.ts";

/**
 * Compiled expressions by source text, so that each expression is compiled once: the config loader
 * compiles every filter, mapping and webhook expression to validate it, and the pipelines, the
 * webhook route, `check` and `tail` then get the same compiled expression back instead of compiling
 * it again. A reload that keeps an expression keeps its compilation too.
 *
 * Sharing is safe: an evaluation is synchronous and keeps its state on the stack (the time limit is
 * read at each evaluation, not at compilation). Only successes are kept, so every caller of a broken
 * expression hears its error.
 *
 * Bounded, least recently used out: a compiled expression holds its parse tree, its generated code
 * and jsonata's interpreter (~20 KiB), and reloads of an edited configuration leave old sources
 * behind. Past the bound an expression is compiled again, which costs time, never a wrong result.
 */
const MAX_ENTRIES = 1024;

const bySource = new Map<string, CompiledJsonata>();
let compilations = 0;

export function compileOnce(source: string): CompiledJsonata {
  const hit = bySource.get(source);
  if (hit !== undefined) {
    // a Map iterates in insertion order: re-inserting makes the first key the least recently used
    bySource.delete(source);
    bySource.set(source, hit);
    return hit;
  }
  const compiled = compileJsonata(source);
  compilations++;
  bySource.set(source, compiled);
  if (bySource.size > MAX_ENTRIES) bySource.delete(bySource.keys().next().value as string);
  return compiled;
}

/** How many expressions the front door has compiled (not served from the cache) in this process. */
export function expressionCompilations(): number {
  return compilations;
}
