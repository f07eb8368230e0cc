// graphile-worker 0.18 for the peer comparison (bench/peers/sys_graphile.py starts it):
//
//   node graphile.mjs migrate   # installs its schema into $PEER_URL and exits
//   node graphile.mjs worker    # runs task "noop" at concurrency $PEER_CONCURRENCY until SIGTERM
//
// At its defaults otherwise (LISTEN/NOTIFY, a pool of 10, no local queue, no batched completion,
// its console logger). Jobs are added from Python with its SQL API (sys_graphile.py).
import { body, importPeer, onTerm } from "./probe.mjs";

const { run, runMigrations } = await importPeer("graphile-worker");
const connectionString = process.env.PEER_URL;

if (process.argv[2] === "migrate") {
  await runMigrations({ connectionString });
} else {
  const runner = await run({
    connectionString,
    concurrency: Number(process.env.PEER_CONCURRENCY),
    noHandleSignals: true, // SIGTERM handled below: stop, then exit
    taskList: { noop: async (payload) => body(payload.tag) },
  });
  onTerm(() => runner.stop());
}
