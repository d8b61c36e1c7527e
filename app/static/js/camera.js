// The webcam: open it into a <video>, grab frames as JPEG/WebP blobs at a given size, close it.

export class CameraError extends Error {}

/** Start the camera into `video`; resolves to the MediaStream once frames are playing. */
export async function openCamera(video) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new CameraError(
      window.isSecureContext
        ? 'This browser has no camera access.'
        : 'The camera only works over https or on localhost.',
    );
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 } },
      audio: false,
    });
  } catch (err) {
    const why = err.name === 'NotAllowedError' ? 'Camera permission was refused.'
      : err.name === 'NotFoundError' ? 'No camera was found.'
        : `The camera could not be opened (${err.name}).`;
    throw new CameraError(why);
  }
  video.srcObject = stream;
  await video.play();
  if (!video.videoWidth) await new Promise((resolve) => video.addEventListener('loadedmetadata', resolve, { once: true }));
  return stream;
}

export function closeCamera(video, stream) {
  stream?.getTracks().forEach((track) => track.stop());
  video.srcObject = null;
}

const scratch = document.createElement('canvas');

/**
 * The current video frame, scaled so its longest side is `longest` (never upscaled), encoded as
 * `type` ('image/jpeg' or 'image/webp'). Resolves to a Blob, or null if no frame is available.
 */
export function grabFrame(video, longest, type = 'image/jpeg', quality = 0.8) {
  const { videoWidth: w, videoHeight: h } = video;
  if (!w || !h) return Promise.resolve(null);
  const scale = Math.min(1, longest / Math.max(w, h));
  scratch.width = Math.max(1, Math.round(w * scale));
  scratch.height = Math.max(1, Math.round(h * scale));
  scratch.getContext('2d').drawImage(video, 0, 0, scratch.width, scratch.height);
  return new Promise((resolve) => scratch.toBlob(resolve, type, quality));
}
