import type { Pipeline } from "../../config/schema.ts";
import type { SelectedBy } from "../../event/selection.ts";

/**
 * What decides which events reach a pipeline, for src/event/selection.ts: an export pipeline has
 * no default filter (only `import: users` has one), so it reads as a kind of its own.
 */
export const selectedBy = (p: Pipeline): SelectedBy => ({
  import: p.import ?? "export",
  filter: p.filter,
  consents: p.consents,
});
