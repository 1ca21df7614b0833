/**
 * The NATS connection of the read-only commands (`tail`, `stream`): the node's setting, NATS_URL
 * (a comma-separated list is fine), default nats://127.0.0.1:4222. Unlike the node's bus it creates
 * no stream: looking must not change what is there.
 */
import { connect, type ConnectionOptions, type NatsConnection } from "@nats-io/transport-node";
import { fail } from "./cli.ts";

export const natsServers = () => process.env.NATS_URL || "nats://127.0.0.1:4222";

/** Connects or exits 1 naming the servers it tried. */
export async function connectOrExit(
  command: string,
  options: Partial<ConnectionOptions> = {},
): Promise<NatsConnection> {
  const servers = natsServers();
  try {
    return await connect({
      servers: servers
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean),
      name: `tributary-${command}`,
      timeout: 5000,
      ...options,
    });
  } catch (e) {
    fail(command, `cannot connect to NATS at ${servers} (set NATS_URL): ${(e as Error).message}`);
  }
}
