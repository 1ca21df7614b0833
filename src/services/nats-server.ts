import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { ManagedProcess } from "./managed-process.ts";
import { freePort, waitForPort } from "./ports.ts";

export interface LocalNatsOptions {
  dataDir: string;
  port?: number;
  binary?: string;
  /** Extra arguments, e.g. cluster routes. */
  args?: string[];
}

/** A `nats-server -js` on loopback with its store under dataDir. */
export class LocalNats extends ManagedProcess {
  private constructor(
    readonly port: number,
    readonly dataDir: string,
    cmd: string[],
  ) {
    super({ name: "nats-server", cmd, logFile: join(dataDir, "nats-server.log"), ready: (alive) => waitForPort(port, 15_000, "127.0.0.1", alive) });
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  static async create(o: LocalNatsOptions): Promise<LocalNats> {
    const port = o.port ?? (await freePort());
    mkdirSync(join(o.dataDir, "jetstream"), { recursive: true });
    const cmd = [o.binary ?? "nats-server", "-js", "-a", "127.0.0.1", "-p", String(port), "-sd", join(o.dataDir, "jetstream"), ...(o.args ?? [])];
    return new LocalNats(port, o.dataDir, cmd);
  }
}
