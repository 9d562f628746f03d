// Local PLY files: SHARP's PLY carries its camera after the splats; Spark reads the splats alone.
// Imports nothing.

/**
 * A PLY for Spark: the vertex element alone (SHARP's PLY adds camera elements after it), plus the
 * camera from its `intrinsic` and `image_size` elements when present.
 */
export function plyForSpark(bytes) {
  const head = new TextDecoder("latin1").decode(bytes.subarray(0, Math.min(bytes.length, 16384)));
  const end = head.indexOf("end_header\n");
  if (!head.startsWith("ply") || end < 0) return { bytes, camera: null };
  const dataStart = end + "end_header\n".length;
  const sizes = { char: 1, uchar: 1, int8: 1, uint8: 1, short: 2, ushort: 2, int16: 2, uint16: 2, int: 4, uint: 4, int32: 4, uint32: 4, float: 4, float32: 4, double: 8, float64: 8 };
  const elements = [];
  const lines = head.slice(0, end).split("\n");
  let vertexHeaderEnd = -1;
  for (const [index, line] of lines.entries()) {
    const words = line.trim().split(/\s+/);
    if (words[0] === "format" && words[1] !== "binary_little_endian") return { bytes, camera: null };
    if (words[0] === "element") elements.push({ name: words[1], count: Number(words[2]), props: [] });
    else if (words[0] === "property" && elements.length) {
      if (words[1] === "list") return { bytes, camera: null };
      elements.at(-1).props.push({ name: words[2], type: words[1], size: sizes[words[1]] || 0 });
    }
    if (elements.length === 1) vertexHeaderEnd = index;
  }
  if (elements[0]?.name !== "vertex" || elements.length === 1) return { bytes, camera: null };
  let offset = dataStart;
  const where = {};
  for (const element of elements) {
    const stride = element.props.reduce((sum, p) => sum + p.size, 0);
    where[element.name] = { offset, element };
    offset += stride * element.count;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let camera = null;
  if (where.intrinsic && where.image_size && offset <= bytes.length) {
    const f = view.getFloat32(where.intrinsic.offset, true);
    const read = where.image_size.element.props[0].type.startsWith("u") ? "getUint32" : "getInt32";
    const width = view[read](where.image_size.offset, true);
    const height = view[read](where.image_size.offset + 4, true);
    if (f > 0 && width > 0 && height > 0) camera = { fPx: f, width, height };
  }
  const vertexBytes = where.vertex.element.props.reduce((sum, p) => sum + p.size, 0) * where.vertex.element.count;
  const header = new TextEncoder().encode(`${lines.slice(0, vertexHeaderEnd + 1).join("\n")}\nend_header\n`);
  const trimmed = new Uint8Array(header.length + vertexBytes);
  trimmed.set(header, 0);
  trimmed.set(bytes.subarray(dataStart, dataStart + vertexBytes), header.length);
  return { bytes: trimmed, camera };
}
