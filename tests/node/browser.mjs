// A real WebRTC publisher for the socket.io-client suite: headless Chromium (system
// /usr/bin/chromium or CHROMIUM, driven by playwright-core) with a fake camera, whose publish
// connection is negotiated by the test over its own socket (`sfu-publish`), so a relayed room
// has a track the SFU forwards, and joiners get `sfu-subscribe-offer`s.

import { existsSync } from 'node:fs';

import * as h from './harness.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** Why the browser helpers cannot run here, or null when they can. */
export async function browserMissing() {
  if (!existsSync(CHROMIUM)) return `no Chromium at ${CHROMIUM}`;
  try {
    await import('playwright-core');
  } catch {
    return 'playwright-core is not installed (npm ci --prefix tests/node)';
  }
  return null;
}

let browser = null;

async function launch() {
  if (!browser) {
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      chromiumSandbox: false,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
        '--use-fake-ui-for-media-stream',
        '--use-fake-device-for-media-stream',
        '--allow-loopback-in-peer-connection',
      ],
    });
  }
  return browser;
}

export async function closeBrowser() {
  if (browser) await browser.close().catch(() => {});
  browser = null;
}

/**
 * Publishes the fake camera into relayed room `roomId` over `socket` (a member of the room);
 * returns once the publish connection is connected. The page is closed with the browser.
 */
export async function publishCamera(server, socket, roomId) {
  const context = await (await launch()).newContext();
  const page = await context.newPage();
  // Any page of the server's origin: 127.0.0.1 is a secure context, so getUserMedia works.
  await page.goto(`${server.base}/livez`);
  const offer = await page.evaluate(async () => {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } });
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    for (const t of stream.getTracks()) pc.addTrack(t, stream);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') resolve();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
      setTimeout(resolve, 3000);
    });
    window.pub = pc;
    return pc.localDescription.sdp;
  });
  const res = await h.ack(socket, 'sfu-publish', { roomId, sdp: offer });
  if (!res.ok) throw new Error(`sfu-publish: ${JSON.stringify(res)}`);
  await page.evaluate(async (sdp) => {
    await window.pub.setRemoteDescription({ type: 'answer', sdp });
    await new Promise((resolve, reject) => {
      const check = () => {
        if (window.pub.connectionState === 'connected') resolve();
        else if (window.pub.connectionState === 'failed') reject(new Error('publish connection failed'));
      };
      window.pub.addEventListener('connectionstatechange', check);
      check();
      setTimeout(() => reject(new Error(`publish connection ${window.pub.connectionState} after 10 s`)), 10000);
    });
  }, res.sdp);
  return page;
}
