"""The camera watcher: identifies people in a video stream and publishes one event per person."""
