// Two <video> elements played as one: one play/pause, one seek, one speed, frame stepping.
// The first video leads; the second is pulled back onto it whenever they drift apart by more than a
// frame while playing, and set exactly onto it on every pause and seek.

const MEDIA_ERRORS = { 1: "aborted", 2: "network error", 3: "cannot decode", 4: "format or codec not supported" };

export class SyncedPlayer {
  /**
   * @param {HTMLVideoElement} lead  the video whose clock rules
   * @param {HTMLVideoElement} follower  kept on the lead's frame
   * @param {{onTime?: (t: number) => void, onPlayState?: (playing: boolean) => void,
   *          onError?: (video: HTMLVideoElement, message: string) => void,
   *          onLoaded?: (video: HTMLVideoElement) => void}} hooks
   *   onTime runs on every animation frame while playing and after every seek; it may seek.
   */
  constructor(lead, follower, hooks = {}) {
    this.lead = lead;
    this.follower = follower;
    this.videos = [lead, follower];
    this.hooks = hooks;
    this.fps = 24;
    this.numFrames = 1;
    this.playing = false;
    this.rate = 1;
    this._tick = this._tick.bind(this);
    for (const v of this.videos) {
      v.addEventListener("error", () => this.hooks.onError?.(v, SyncedPlayer.describeError(v)));
      v.addEventListener("loadeddata", () => this.hooks.onLoaded?.(v));
    }
    lead.addEventListener("ended", () => this.pause());
    lead.addEventListener("seeked", () => {
      if (!this.playing && Math.abs(follower.currentTime - lead.currentTime) > 0.5 / this.fps) {
        follower.currentTime = lead.currentTime;
      }
      this.hooks.onTime?.(lead.currentTime);
    });
  }

  static describeError(video) {
    const err = video.error;
    const what = err ? MEDIA_ERRORS[err.code] || `error ${err.code}` : "error";
    return `This video cannot be played in this browser (${what}${err && err.message ? ": " + err.message : ""}). ` +
      "Try an H.264 MP4 or a VP9 WebM, or another browser.";
  }

  /** Show a new pair of files; ``fps`` and ``numFrames`` come from the server's probe. */
  load(leadSrc, followerSrc, fps, numFrames) {
    this._stop(); // no onTime: the old clip's time means nothing for the new one
    this.fps = fps;
    this.numFrames = numFrames;
    for (const [v, src] of [[this.lead, leadSrc], [this.follower, followerSrc]]) {
      if (v.getAttribute("src") !== src) {
        v.setAttribute("src", src);
        v.load();
      }
      v.playbackRate = this.rate;
    }
  }

  get time() { return this.lead.currentTime; }

  get duration() { return this.numFrames / this.fps; }

  /** The frame index shown at time ``t`` (default: now). */
  frameAt(t = this.lead.currentTime) {
    return Math.max(0, Math.min(this.numFrames - 1, Math.floor(t * this.fps + 1e-6)));
  }

  /** The middle of a frame's display interval: seeking there shows exactly that frame. */
  frameTime(frame) {
    return (Math.max(0, Math.min(this.numFrames - 1, frame)) + 0.5) / this.fps;
  }

  seek(t) {
    for (const v of this.videos) {
      if (v.readyState >= 1) v.currentTime = t;
      else v.addEventListener("loadedmetadata", () => { v.currentTime = t; }, { once: true });
    }
    this.hooks.onTime?.(t);
  }

  seekFrame(frame) { this.seek(this.frameTime(frame)); }

  /** Pause and move both videos by ``delta`` frames; returns the new frame. */
  step(delta) {
    if (this.playing) this.pause();
    const frame = Math.max(0, Math.min(this.numFrames - 1, this.frameAt() + delta));
    this.seekFrame(frame);
    return frame;
  }

  setRate(rate) {
    this.rate = rate;
    for (const v of this.videos) v.playbackRate = rate;
  }

  play() {
    this.playing = true;
    this.follower.currentTime = this.lead.currentTime;
    for (const v of this.videos) v.play().catch(() => {}); // a failed play shows up as a media error
    this.hooks.onPlayState?.(true);
    requestAnimationFrame(this._tick);
  }

  pause() {
    this._stop();
    if (this.follower.readyState >= 1) this.follower.currentTime = this.lead.currentTime;
    this.hooks.onTime?.(this.lead.currentTime);
  }

  _stop() {
    const was = this.playing;
    this.playing = false;
    for (const v of this.videos) v.pause();
    if (was) this.hooks.onPlayState?.(false);
  }

  toggle() { if (this.playing) this.pause(); else this.play(); }

  _tick() {
    if (!this.playing) return;
    const t = this.lead.currentTime;
    if (Math.abs(this.follower.currentTime - t) > 1 / this.fps) this.follower.currentTime = t;
    this.hooks.onTime?.(t);
    requestAnimationFrame(this._tick);
  }
}
