// The job body of the Node peers, the same as peerlib's (bench/peers/peerlib.py): a no-op, or a
// 1 s wait for C, reporting with one UDP datagram "tag time pid" to 127.0.0.1:$PEER_PROBE_PORT at
// the body's start or end ($PEER_PROBE_AT); the time is Date.now() in seconds (ms precision).
import dgram from "node:dgram";
import { createRequire } from "node:module";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";

// The npm packages live in bench/peers/.node (installed by run.py), not beside this file.
const nodeRequire = createRequire(new URL("../.node/package.json", import.meta.url));
export const importPeer = (name) => import(pathToFileURL(nodeRequire.resolve(name)).href);

const port = Number(process.env.PEER_PROBE_PORT);
const at = process.env.PEER_PROBE_AT ?? "end";
const waitMs = Number(process.env.PEER_WAIT_S ?? "0") * 1000;
const sock = dgram.createSocket("udp4");
sock.unref();

export function probe(tag) {
  sock.send(`${tag} ${(Date.now() / 1000).toFixed(3)} ${process.pid}`, port, "127.0.0.1");
}

export async function body(tag) {
  if (at === "start") probe(tag);
  if (waitMs) await sleep(waitMs);
  if (at === "end") probe(tag);
}

// SIGTERM (peerlib's stop_worker): stop the system's worker, then exit; forced after 8 s.
export function onTerm(stop) {
  process.once("SIGTERM", () => {
    setTimeout(() => process.exit(1), 8000).unref();
    Promise.resolve(stop()).then(
      () => process.exit(0),
      (err) => {
        console.error(err);
        process.exit(1);
      },
    );
  });
}
