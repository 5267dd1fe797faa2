// The JavaScript client against a real `cluster run` (tests/apps/clients_app.py with
// two gateways), which tests/integration/test_js_client.py starts and describes in
// the environment: CLUSTER_PORTS (the two gateways' ports) and CLUSTER_VICTIM_PID (a
// gateway on the first port, which the supervisor restarts on that port when killed).
// Node 20 has no WebSocket of its own: `ws`, in the tests only.

import assert from "node:assert/strict";
import { createServer } from "node:net";
import { test } from "node:test";
import WebSocket from "ws";

import { CallError, connect } from "../cluster-client.js";

const [first, second] = (process.env.CLUSTER_PORTS || "").split(",").map(Number);
const live = Boolean(first && second);

function until(predicate, what, ms = 15000) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const poll = () => {
      if (predicate()) resolve();
      else if (Date.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(poll, 20);
    };
    poll();
  });
}

function opened(client) {
  return until(() => client.state === "open", "the connection");
}

async function post(port, path) {
  const answer = await fetch(`http://127.0.0.1:${port}${path}`, { method: "POST" });
  assert.equal(answer.status, 200);
  return answer.json();
}

test("calls, their errors and their timeout", { skip: !live }, async () => {
  const client = connect(`ws://127.0.0.1:${first}/rpc`, { WebSocket, callTimeout: 2000 });
  try {
    assert.deepEqual(await client.call("echo", "echo", { a: 1, b: [2] }), { a: 1, b: [2] });
    await assert.rejects(client.call("echo", "nothing"),
                         (e) => e instanceof CallError && e.kind === "not_found");
    await assert.rejects(client.call("cluster", "subscribe", { group: "secret:x" }),
                         (e) => e.kind === "forbidden");
    await assert.rejects(client.call("echo", "slow", { seconds: 2.5 }),
                         (e) => e.kind === "timeout");
    // Calls on one connection run in order: this answer comes after the slow one's.
    assert.deepEqual(await client.call("echo", "echo", { after: 1 }), { after: 1 });
  } finally {
    client.close();
  }
  assert.equal(client.state, "closed");
  await assert.rejects(client.call("echo", "echo"), (e) => e.kind === "closed");
});

test("a refused subscription says so", { skip: !live }, async () => {
  const client = connect(`ws://127.0.0.1:${first}/rpc`, { WebSocket });
  try {
    const refused = new Promise((resolve) => {
      client.subscribe("secret:x", { onError: resolve });
    });
    assert.equal((await refused).kind, "forbidden");
    assert.equal(client.subscriptions.size, 0);
  } finally {
    client.close();
  }
});

test("group messages, presence and pushes across gateways", { skip: !live }, async () => {
  const a = connect(`ws://127.0.0.1:${first}/rpc`, { WebSocket });
  const b = connect(`ws://127.0.0.1:${second}/rpc`, { WebSocket });
  try {
    const got = [];
    b.subscribe("room:js-p", { onMessage: (m) => got.push(m) });
    const who = await b.presence("room:js-p"); // answered once the subscription is in place
    assert.equal(who.count, 1);
    assert.deepEqual((await a.presence("room:js-p")).conns, who.conns);
    await a.call("room", "say", { group: "room:js-p", text: "hi" });
    await until(() => got.length === 1, "the message");
    assert.deepEqual(got[0].data, { text: "hi" });
    assert.equal(got[0].offset, 1);
    const pushed = [];
    b.on("message", (data) => pushed.push(data));
    const conn = await b.call("echo", "whoami");
    await post(first, `/push?conn=${encodeURIComponent(conn)}&text=psst`);
    await until(() => pushed.length === 1, "the push");
    assert.deepEqual(pushed, ["psst"]);
    await b.unsubscribe("room:js-p");
    assert.equal((await a.presence("room:js-p")).count, 0);
  } finally {
    a.close();
    b.close();
  }
});

test("every message once and in order across a gateway killed and restarted",
     { skip: !live || !process.env.CLUSTER_VICTIM_PID }, async () => {
  const total = 600;
  const states = [];
  const got = []; // the payloads, and their offsets: publish() from two workers may
  const offsets = []; // number two batches in either order, so the offsets say "in order"
  const gaps = [];
  const client = connect(`ws://127.0.0.1:${first}/rpc`, { WebSocket });
  client.on("state", (change) => states.push(change.state));
  try {
    client.subscribe("room:js-r", {
      onMessage: (m) => { got.push(m.data.n); offsets.push(m.offset); },
      onGap: (gap) => gaps.push(gap),
    });
    await opened(client);
    await client.presence("room:js-r"); // in place
    for (let n = 1; n <= total; n += 20) {
      await post(second, `/publish?group=room:js-r&first=${n}&count=20`);
      if (n === 201) process.kill(Number(process.env.CLUSTER_VICTIM_PID), "SIGKILL");
    }
    await until(() => got.length >= total, `${total} messages (have ${got.length})`, 45000);
    assert.deepEqual(gaps, []);
    const all = Array.from({ length: total }, (_, i) => i + 1);
    assert.deepEqual(offsets, all); // each once, in order, none missing
    assert.deepEqual([...got].sort((x, y) => x - y), all); // and every one published
    assert.ok(states.includes("reconnecting"), states.join());
  } finally {
    client.close();
  }
});

test("calls wait in a bounded queue while disconnected", async () => {
  // A port nobody listens on: the client keeps trying, and calls wait.
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  const client = connect(`ws://127.0.0.1:${port}/rpc`,
                         { WebSocket, queueSize: 2, firstDelay: 50, maxDelay: 100 });
  const states = [];
  client.on("state", (change) => states.push(change));
  await until(() => client.state === "reconnecting", "the first failure");
  const waiting = [client.call("echo", "echo"), client.call("echo", "echo")];
  await assert.rejects(client.call("echo", "echo"), (e) => e.kind === "queue_full");
  await until(() => states.filter((s) => s.state === "reconnecting").length >= 3,
              "three attempts");
  const delays = states.filter((s) => s.state === "reconnecting").map((s) => s.delay);
  assert.ok(delays.every((d) => d >= 37 && d <= 125), delays.join());
  client.close();
  for (const call of waiting) await assert.rejects(call, (e) => e.kind === "closed");
  assert.equal(client.state, "closed");
});
