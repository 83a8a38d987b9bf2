// The official npm client (ConvexClient from "convex/browser") against a Ripple deployment, in Node:
// subscribe to a video with onUpdate, queue it with a mutation, print what the subscription sees, exit.
//
//   node subscribe.mjs --url http://127.0.0.1:8000 --token "$(ripple token --sub demo)" --twitch-id node-demo
//
// videos:create needs a signed-in user: the token is a JWT the server verifies (`ripple token` mints one with
// RIPPLE_JWT_SECRET). Exits 0 once the subscription has shown the queued video, 2 after --timeout seconds.
import { parseArgs } from "node:util";
import { ConvexClient } from "convex/browser";
import { anyApi } from "convex/server";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string", default: "http://127.0.0.1:8000" },
    token: { type: "string" },
    "twitch-id": { type: "string", default: `node-${Date.now()}` },
    timeout: { type: "string", default: "30" },
  },
});
const twitchId = opts["twitch-id"];
const client = new ConvexClient(opts.url);
if (opts.token) client.setAuth(async () => opts.token);

const timer = setTimeout(() => {
  console.error(`subscribe: no queued video ${twitchId} after ${opts.timeout}s`);
  process.exit(2);
}, Number(opts.timeout) * 1000);

const seen = new Promise((resolve, reject) => {
  // Called with the current result right away, then again after every commit that changes it.
  client.onUpdate(
    anyApi.videos.getByTwitchId,
    { twitchId },
    (video) => {
      console.log(`update: ${video === null ? "no such video yet" : `${video.title}: ${video.status}`}`);
      if (video !== null) resolve(video);
    },
    reject,
  );
});

try {
  const id = await client.mutation(anyApi.videos.create, { twitchId, title: `Node demo ${twitchId}` });
  // The mutation resolves once the server's query results include the write (read-your-writes).
  console.log(`mutation: videos:create -> ${id}`);
  const video = await seen;
  console.log(`done: ${video.twitchId} is ${video.status}`);
} catch (err) {
  console.error(`subscribe: ${err.message}`);
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  await client.close();
}
