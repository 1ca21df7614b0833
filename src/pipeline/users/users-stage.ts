import type { Warehouse } from "../../sink/clickhouse/server.ts";
import { quoteIdent, quoteString } from "../../sink/clickhouse/server.ts";
import type { PipelineStats } from "../stats.ts";
import type { PipelineStage } from "../worker.ts";
import type { SandboxedTransform } from "../transform/types.ts";
import { ModelCheck, ModelViolation, timeCell, toCell, type CustomerModel } from "./customer-model.ts";
import type { ProfileState, ProfileStore, ProfileUpdate } from "./profiles.ts";

type Json = Record<string, unknown>;

/**
 * Krenalis's preset for "Import users" (identify events, or any event that carries traits),
 * plus alias: it carries no traits but links two identities.
 */
export const DEFAULT_USERS_FILTER = `type in ["identify", "alias"] or $exists(traits)`;

const str = (v: unknown) => (typeof v === "string" && v !== "" ? v : undefined);

/** A users row: the profile's whole state at `revision`. */
export function userRow(s: ProfileState, model: CustomerModel, w: Warehouse): Json {
  const p = s.profile;
  const f = w.features;
  const row: Json = {
    profile_id: p.id,
    user_id: p.userId ?? null,
    anonymous_ids: p.anonymousIds,
    first_seen_at: timeCell(p.firstSeen === Number.MAX_SAFE_INTEGER ? p.updatedAt : p.firstSeen, f),
    last_seen_at: timeCell(p.lastSeen || p.updatedAt, f),
    updated_at: timeCell(p.updatedAt, f),
    _version: s.revision,
    _deleted: p.mergedInto ? 1 : 0,
  };
  for (const [name, type] of Object.entries(model)) row[name] = toCell(type, p.props[name]?.v, f);
  return row;
}

/**
 * "Import users into warehouse": the transformation turns each kept event into Customer Model
 * properties, checked against the model; identity resolution folds them into profiles; every
 * profile the batch touched is written to `users` as its new state.
 */
export class UsersStage implements PipelineStage {
  readonly table = "users";
  #merged: string[] = [];
  readonly #check: ModelCheck;

  constructor(
    readonly pipeline: string,
    readonly transform: SandboxedTransform,
    readonly model: CustomerModel,
    readonly profiles: ProfileStore,
    readonly warehouse: Warehouse,
  ) {
    this.#check = new ModelCheck(model);
  }

  async toRows(events: Json[], stats: PipelineStats): Promise<Json[]> {
    if (!events.length) return [];
    const results = await this.transform.transformBatch(events);
    const updates: ProfileUpdate[] = [];
    events.forEach((e, i) => {
      const messageId = String(e.messageId);
      const r = results[i]!;
      if (!r.ok) return stats.recordError(`pipeline "${this.pipeline}": transformation failed: ${r.error}`, messageId);
      const value = r.value ?? {};
      try {
        this.#check.assert(value);
      } catch (err) {
        if (!(err instanceof ModelViolation)) throw err;
        return stats.recordError(`pipeline "${this.pipeline}": ${err.message} (messageId ${messageId})`, messageId);
      }
      const userId = str(e.userId);
      const anonymousId = str(e.anonymousId);
      if (userId === undefined && anonymousId === undefined) {
        return stats.recordError(`pipeline "${this.pipeline}": the event has neither userId nor anonymousId`, messageId);
      }
      const timestamp = Date.parse(String(e.timestamp ?? e.receivedAt));
      updates.push({
        userId,
        anonymousId,
        previousId: e.type === "alias" ? str(e.previousId) : undefined,
        timestamp: Number.isNaN(timestamp) ? Date.now() : timestamp,
        messageId,
        props: value,
      });
      stats.transformed++;
      stats.onOutcome?.(messageId, "transformed");
    });
    const touched = await this.profiles.apply(updates);
    this.#merged.push(...touched.filter((s) => s.profile.mergedInto).map((s) => s.profile.id));
    return touched.map((s) => userRow(s, this.model, this.warehouse));
  }

  /** Before ReplacingMergeTree had is_deleted (23.2), merged-away profiles are deleted by a mutation. */
  async afterInsert(): Promise<void> {
    if (this.warehouse.features.replacingIsDeleted || !this.#merged.length) return;
    const ids = this.#merged.map(quoteString).join(", ");
    await this.warehouse.client.command({ query: `ALTER TABLE ${quoteIdent(this.warehouse.database)}.users DELETE WHERE profile_id IN (${ids})` });
    this.#merged = [];
  }

  dispose(): void {
    this.transform.dispose();
  }
}
