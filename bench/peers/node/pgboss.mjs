// pg-boss 12 for the peer comparison (bench/peers/sys_pgboss.py starts it):
//
//   node pgboss.mjs enqueuer   # reads "one <tag>" / "batch <first> <n>" lines, answers "ok" when sent
//   node pgboss.mjs worker     # works queue "noop" at $PEER_CONCURRENCY until SIGTERM
//
// $PEER_URL is the database. $PEER_PGBOSS_MODE picks the worker's shape (sys_pgboss.py says why):
// "batch" (the harness's default): LISTEN/NOTIFY on, one work() fetching batchSize = concurrency
// jobs, the batch's bodies at once, the next fetch at once while fetches come back full
// (burstWhenBatchFull); "polling": pg-boss's defaults, localConcurrency = concurrency workers of
// one job each, each polling every 2 s.
import readline from "node:readline";
import { body, importPeer, onTerm } from "./probe.mjs";

const { PgBoss } = await importPeer("pg-boss");
const QUEUE = "noop";
const batchMode = (process.env.PEER_PGBOSS_MODE ?? "batch") === "batch";
const boss = new PgBoss({ connectionString: process.env.PEER_URL, useListenNotify: batchMode });
boss.on("error", (err) => console.error("pg-boss error:", err));
await boss.start();

if (process.argv[2] === "enqueuer") {
  await boss.createQueue(QUEUE, batchMode ? { notify: true } : {});
  process.stdout.write("ready\n");
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const [cmd, a, b] = line.split(" ");
    if (cmd === "one") {
      await boss.send(QUEUE, { tag: a });
    } else if (cmd === "batch") {
      const first = Number(a);
      await boss.insert(
        QUEUE,
        Array.from({ length: Number(b) }, (_, i) => ({ data: { tag: `t${first + i}` } })),
      );
    } else {
      throw new Error(`pgboss enqueuer: unknown command ${JSON.stringify(line)}`);
    }
    process.stdout.write("ok\n");
  }
  await boss.stop({ graceful: false });
} else {
  const concurrency = Number(process.env.PEER_CONCURRENCY);
  if (batchMode) {
    await boss.work(QUEUE, { batchSize: concurrency, burstWhenBatchFull: true }, async (jobs) => {
      await Promise.all(jobs.map((job) => body(job.data.tag)));
    });
  } else {
    await boss.work(QUEUE, { localConcurrency: concurrency }, async ([job]) => body(job.data.tag));
  }
  onTerm(() => boss.stop({ graceful: true, timeout: 5000 }));
}
