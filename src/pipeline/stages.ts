import type { Bus } from "../bus/connection.ts";
import { publishDeadLetters, type DeadLetter } from "../bus/dead-letters.ts";
import type { Pipeline } from "../config/schema.ts";
import type { Warehouse } from "../sink/clickhouse/server.ts";
import { ensureRawTable } from "../sink/clickhouse/raw-table.ts";
import { eventsStage } from "./events-stage.ts";
import { rawStage } from "./raw-stage.ts";
import { createTransform } from "./transform/index.ts";
import { announce } from "./transform/sandbox-process.ts";
import { parseSandboxOptions } from "./transform/sandbox-isolation.ts";
import { UsersStage } from "./users/users-stage.ts";
import { ProfileStore } from "./users/profiles.ts";
import type { CustomerModel } from "./users/customer-model.ts";
import { NO_IDENTIFIERS, type IdentityRules } from "./users/identity-rules.ts";
import type { Stage } from "./stage.ts";
import { ExportStage } from "./export/stage.ts";
import { type DestinationOptions, describeDestination, resolveDestination } from "../config/destination.ts";

/** What building a stage needs; the profile store is opened once, on first use. */
export class StageFactory {
  #profiles?: Promise<ProfileStore>;

  constructor(
    readonly bus: Bus,
    readonly warehouse: Warehouse,
  ) {
    announce(parseSandboxOptions()); // at start-up, whether or not a pipeline runs JavaScript or Python yet
  }

  /** The stage of a pipeline (or of a raw connection's table loader when `rawTable` is set). */
  async build(
    connection: string,
    p: Pipeline,
    model: CustomerModel | undefined,
    rawTable?: string,
    rules: IdentityRules = NO_IDENTIFIERS,
  ): Promise<Stage> {
    if (rawTable) {
      await ensureRawTable(this.warehouse, rawTable);
      return rawStage(connection, rawTable, this.warehouse);
    }
    if (p.export) return this.#exportStage(connection, p);
    if (p.import === "events") return eventsStage(connection, p.name, this.warehouse.features);
    if (!model) throw new Error(`pipeline "${p.name}": import: users needs the Customer Model`);
    this.#profiles ??= ProfileStore.open(this.bus.js, this.bus.options.streamReplicas);
    const deadLetters = (letters: DeadLetter[]) => publishDeadLetters(this.bus, letters);
    return new UsersStage(
      p.name,
      await createTransform(p.transform!),
      model,
      await this.#profiles,
      this.warehouse,
      connection,
      deadLetters,
      rules,
    );
  }

  async #exportStage(connection: string, p: Pipeline): Promise<ExportStage> {
    if (!p.destination) throw new Error(`pipeline "${p.name}": export needs a destination`);
    const d = resolveDestination(p.destination);
    const deadLetters = (letters: DeadLetter[]) => publishDeadLetters(this.bus, letters);
    const transform = p.transform ? await createTransform(p.transform) : undefined;
    return new ExportStage(connection, p.name, d, exportTable(d), transform, deadLetters);
  }
}

/** What an export's dead letters and logs name as its "table": the destination, without secrets. */
export function exportTable(d: DestinationOptions): string {
  const { type, url } = describeDestination(d);
  return `${type}:${url}`;
}
