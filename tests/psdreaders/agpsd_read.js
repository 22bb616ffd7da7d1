// Read a PSD/PSB with ag-psd (the npm reader web editors use), strict mode, and print what it saw as JSON.
//   node agpsd_read.js FILE [COMPOSITE_OUT]      (NODE_PATH must hold the folder with ag-psd in it)
// Exit 1 with the reader's message on any error; COMPOSITE_OUT gets the merged image as raw RGBA
// (8-bit bytes, or 16-bit little-endian words).
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const { readPsd, initializeCanvas } = require("ag-psd");

// No canvas in node: pixel buffers are plain arrays (ag-psd's documented way for node without canvas).
initializeCanvas(() => { throw new Error("no canvas in node"); },
                 (width, height) => ({ width, height, data: new Uint8ClampedArray(width * height * 4) }));

// sha1 of a pixel buffer: every RGBA value (as stored: bytes, or 16-bit little-endian words), or channel 0 only
function digest(imageData, grey) {
  if (!imageData) return null;
  let d = imageData.data;
  if (grey) d = d.filter((_, i) => i % 4 === 0);
  return crypto.createHash("sha1").update(Buffer.from(d.buffer, d.byteOffset, d.byteLength)).digest("hex");
}

function layer(l) {
  const out = {
    name: l.name, blendMode: l.blendMode, opacity: l.opacity, hidden: !!l.hidden,
    rect: [l.top || 0, l.left || 0, l.bottom || 0, l.right || 0],
    pixels: l.imageData ? [l.imageData.width, l.imageData.height] : null, sha1: digest(l.imageData, false),
    mask: l.mask ? { rect: [l.mask.top || 0, l.mask.left || 0, l.mask.bottom || 0, l.mask.right || 0],
                     defaultColor: l.mask.defaultColor, disabled: !!l.mask.disabled,
                     pixels: l.mask.imageData ? [l.mask.imageData.width, l.mask.imageData.height] : null,
                     sha1: digest(l.mask.imageData, true) } : null,
  };
  if (l.children) out.children = l.children.map(layer);
  return out;
}

const [file, compositeOut] = process.argv.slice(2);
try {
  const buf = fs.readFileSync(file);
  const psd = readPsd(buf, { strict: true, totalMemoryLimit: undefined, useImageData: true, skipThumbnail: true, throwForMissingFeatures: false });
  const c = psd.imageData;
  if (c && compositeOut) fs.writeFileSync(compositeOut, Buffer.from(c.data.buffer, c.data.byteOffset, c.data.byteLength));
  process.stdout.write(JSON.stringify({
    version: buf.readUInt16BE(4), width: psd.width, height: psd.height, channels: psd.channels,
    bitsPerChannel: psd.bitsPerChannel, colorMode: psd.colorMode,
    composite: c ? { width: c.width, height: c.height, bytesPerValue: c.data.BYTES_PER_ELEMENT } : null,
    children: (psd.children || []).map(layer),
  }) + "\n");
} catch (e) {
  process.stderr.write(`ag-psd: ${file}: ${e && e.message ? e.message : e}\n`);
  process.exit(1);
}
