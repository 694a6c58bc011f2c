// The device camera (navigator.mediaDevices.getUserMedia): start it, capture a frame as a JPEG Blob.

export function setUpCamera({ start, capture, video, status, onCapture }) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    start.disabled = true;
    status.textContent = "No camera here: the browser offers one only on HTTPS or localhost.";
    return;
  }
  let stream = null;
  start.addEventListener("click", async () => {
    if (stream) {
      stop();
      return;
    }
    status.textContent = "Starting the camera…";
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (error) {
      status.textContent = `No camera available (${error.name}): choose a photo instead.`;
      return;
    }
    video.srcObject = stream;
    video.hidden = false;
    await video.play();
    capture.disabled = false;
    start.textContent = "Stop camera";
    status.textContent = "Camera on: press Capture to take the sample.";
  });
  capture.addEventListener("click", () => {
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob(
      (blob) => {
        if (!blob) {
          status.textContent = "The capture failed: try again.";
          return;
        }
        const photo = new File([blob], "camera.jpg", { type: "image/jpeg" });
        stop();
        status.textContent = "Captured.";
        onCapture(photo);
      },
      "image/jpeg",
      0.92,
    );
  });

  function stop() {
    stream.getTracks().forEach((track) => track.stop());
    stream = null;
    video.srcObject = null;
    video.hidden = true;
    capture.disabled = true;
    start.textContent = "Start camera";
    status.textContent = "";
  }
}
