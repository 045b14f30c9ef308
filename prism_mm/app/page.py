"""The chat page: a thin Gradio front end over pipelines.session (VideoSession, Video, Chat).

One model is loaded at a time (VideoSession of the model and threshold chosen in the page; changing either loads a new
session). Each browser tab holds a Tab: its video's Video handle per attention mode, built in a background thread as
soon as the video is chosen, and its conversation. Answers stream: ask() runs in a worker thread whose on_token feeds
a queue, and the page decodes the tokens so far as they come. Gradio is imported by build_page alone: the rest runs
without it.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from functools import partial

# the page imports prism_mm.pipelines alone (PrismConfig too, through the session's module)
from ..pipelines.report import CPU_TIMING_NOTE, secs
from ..pipelines.session import ATTENTIONS, PrismConfig, Video, VideoSession
from ..pipelines.video import VideoError, VideoOptions, check_range, probe

MODES = ATTENTIONS
DEFAULT_THRESHOLD = PrismConfig.video().threshold_high
DEFAULT_FPS = VideoOptions().fps
DEFAULT_MAX_NEW_TOKENS = 128
STAGES = "decoding + vision tower + decoder prefill"


class Models:
    """The one VideoSession the page runs on, loaded again when the model or the threshold changes."""

    def __init__(self, names: list[str], device: str, random_weights: bool = False):
        self.names, self.device, self.random_weights = names, device, random_weights
        self.session: VideoSession | None = None
        self._key = None
        self._lock = threading.Lock()

    def get(self, name: str, threshold: float) -> VideoSession:
        """The session of (name, threshold); ValueError for a name not offered, ModelNotAvailableError (an OSError)
        for one that cannot be loaded."""
        if name not in self.names:
            raise ValueError(f"model {name!r} is not one this app was started with ({', '.join(self.names)})")
        prism = PrismConfig.video().with_threshold(float(threshold))  # ValueError out of (0, 1]
        with self._lock:
            if self._key != (name, prism):
                self.session = self._key = None  # the old model's memory goes before the new one loads
                session = VideoSession(name, prism, self.device, random_weights=self.random_weights)
                if session.cuda:
                    session.warm_up()  # the one-time kernel compiles, before the first answer rather than in it
                self.session = session
                self._key = (name, prism)
            return self.session


class Tab:
    """One browser tab's video: a Video handle per attention mode (its prefix built in the background), its chat."""

    def __init__(self, session: VideoSession, path: str, name: str, options: VideoOptions):
        self.session, self.path, self.name, self.options = session, path, name, options
        self.videos: dict[str, Video] = {}
        self.builds: dict[str, tuple[list, float]] = {}  # mode -> ([the build's error], started)
        self.chat = None  # (mode, Chat) of the conversation in the page
        self._lock = threading.Lock()

    def video(self, mode: str) -> Video:
        """The Video in `mode`, its prefix build started in the background on first use (each handle builds in its
        own mode, so two tabs building in two modes do not switch the mode under each other)."""
        with self._lock:
            if mode not in self.videos:
                self.builds[mode] = ([], time.perf_counter())
                self.videos[mode] = self.session.load_video(self.path, self.options, background=True, attn=mode)
            return self.videos[mode]

    def build_status(self, mode: str):
        """Status lines while the prefix in `mode` builds, then its summary (or its error)."""
        video = self.video(mode)
        errors, started = self.builds[mode]
        while not video.ready():
            yield (f"Building the prefix of **{self.name}** ({mode}): {STAGES} … "
                   f"{time.perf_counter() - started:.1f} s")
            time.sleep(0.25)
        if not errors:
            try:
                video.wait()  # raises the background build's error, once
            except Exception as e:  # noqa: BLE001 - shown in the page
                errors.append(e)
        if errors:
            yield f"**Error:** {message(errors[0], self.path, self.name)}"
            return
        p = video.prefix_info
        b = p.build
        yield (f"**{self.name}** is ready ({mode}): {p.frames} frames at {p.frame_size[0]}x{p.frame_size[1]}, "
               f"{p.visual_tokens} visual tokens; its prefix of {p.tokens} tokens was built in "
               f"{secs(b.video_s + b.prefill_s)} on {self.session.device_name} (decoding + vision tower "
               f"{secs(b.video_s)}, then decoder prefill {secs(b.prefill_s)})"
               + (". **Random weights: the answers are meaningless.**" if self.session.random_weights else ""))

    def failed(self, mode: str) -> bool:
        """The prefix build in `mode` has ended in an error (build_status showed it)."""
        return bool(self.builds[mode][0])

    def conversation(self, mode: str):
        if self.chat is None or self.chat[0] != mode:
            self.chat = (mode, self.video(mode).chat())
        return self.chat[1]


def message(error: BaseException, path: str = "", name: str = "") -> str:
    """The page's line for an error: the pipeline's own message for bad input (the file named as the user knows it),
    with the type for anything else."""
    text = str(error).replace(path, name) if path else str(error)
    # ModelNotAvailableError is an OSError, VideoError a ValueError
    return text if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {text}"


def visible(text: str) -> str:
    """Text as the page shows it: without control characters (a random-weight model emits them)."""
    return "".join(c for c in text if c.isprintable() or c == "\n").strip()


def stream(session: VideoSession, ask):
    """Yield (text so far, None) per generated token of ask(on_token), then (answer, RunRecord); raises its error."""
    tokens, out, done, result = [], queue.Queue(), object(), {}

    def work():
        try:
            result["record"] = ask(out.put)
        except Exception as e:  # noqa: BLE001 - raised again in the page's thread
            result["error"] = e
        finally:
            out.put(done)

    threading.Thread(target=work, name="prism_mm-app-answer", daemon=True).start()
    finished = False
    while not finished:
        came = [out.get()]
        while not out.empty():  # what came since the last update: one update for all of it
            came.append(out.get_nowait())
        finished = any(item is done for item in came)
        tokens += [item for item in came if item is not done]
        if not finished:
            yield visible(session.processor.decode(tokens, skip_special_tokens=True)), None
    if "error" in result:
        raise result["error"]
    yield visible(result["record"].answer), result["record"]


def stats_line(record, session: VideoSession) -> str:
    """What the page shows under an answer."""
    rate = record.new_tokens / record.decode_s if record.decode_s > 0 else float("nan")
    density = "n/a" if record.mean_density is None else f"{record.mean_density:.2f}"
    reuse = "prefix reused" if record.reused else "prefix built for this answer"
    line = (f"{record.attn} · first token {secs(record.first_token_s)} · {rate:.1f} tokens/s · "
            f"mean density {density} · {reuse}")
    if session.random_weights:
        line += " · random weights: the answer is meaningless"
    return line


def answer_text(text: str, record=None, session=None) -> str:
    """An answer as the chat shows it: the text so far, or, once done, the text and its stats line."""
    if record is None:
        return text or "…"
    return f"{text or '(no visible text)'}\n\n<sub>{stats_line(record, session)}</sub>"


def build_page(models: list[str], videos: list[str], device: str, max_seconds: float, random_weights: bool = False):
    """The page's gradio Blocks. models: the names offered (the first is chosen); videos: the files given on the
    command line; max_seconds: the longest video accepted; random_weights: shipped architectures, random weights."""
    import gradio as gr
    from gradio.utils import get_upload_folder

    loaded = Models(models, device, random_weights)
    allowed = {os.path.abspath(v) for v in videos}
    upload_dir = os.path.abspath(get_upload_folder())

    def load(path, model, threshold, fps, max_frames, mode):
        """Generator of (status, tab, chat history): checks, the model, then the prefix build with its progress."""
        keep = gr.skip(), gr.skip()  # until a new video is loaded, the page goes on with the one it has
        if not path:
            yield "Choose a video from the list or upload one.", *keep
            return
        path, name = os.path.abspath(path), os.path.basename(path)
        if path not in allowed and os.path.commonpath([path, upload_dir]) != upload_dir:
            yield "**Error:** that file was neither given on the command line nor uploaded", *keep
            return
        try:
            options = VideoOptions(fps=float(fps), max_frames=int(max_frames) if max_frames else None)
            info = probe(path)
            check_range(info, options)
            if info.duration > max_seconds:
                raise VideoError(f"{name} is {info.duration:.0f} s long; this app takes videos up to "
                                 f"{max_seconds:.0f} s (start it with --max-seconds N for longer ones)")
            warm = " and compiling its kernels (once per model)" if loaded.device.startswith("cuda") else ""
            yield f"Loading model {model}{warm} …", *keep
            session = loaded.get(model, threshold)
        except Exception as e:  # noqa: BLE001 - the page says what is wrong and keeps serving
            yield f"**Error:** {message(e, path, name)}", *keep
            return
        tab = Tab(session, path, name, options)
        for status in tab.build_status(mode):
            yield status, tab, []

    def ask(question, tab, mode, max_new_tokens, history):
        """Generator of (chat history, question box, status): the answer streamed into the chat."""
        history = list(history or [])
        if not question.strip():
            yield history, question, gr.skip()
            return
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": "…"}]
        if tab is None:
            history[-1]["content"] = "**Error:** choose a video first."
            yield history, "", gr.skip()
            return
        yield history, "", gr.skip()
        for status in tab.build_status(mode):  # waits for the prefix: the answer's first token comes after it
            yield history, "", status
        if tab.failed(mode):
            history[-1]["content"] = status
            yield history, "", gr.skip()
            return
        try:
            answer = partial(tab.conversation(mode).ask, question, int(max_new_tokens))
            for text, record in stream(tab.session, answer):
                history[-1]["content"] = answer_text(text, record, tab.session)
                yield history, "", gr.skip()
        except Exception as e:  # noqa: BLE001
            history[-1]["content"] = f"**Error:** {message(e)}"
            yield history, "", f"**Error:** {message(e)}"

    def compare(question, tab, max_new_tokens):
        """Generator of (prism panel, dense panel): the question answered in both modes, each from its own prefix,
        outside the conversation."""
        panels = {m: "" for m in MODES}
        if tab is None or not question.strip():
            yield "Choose a video and type a question first.", ""
            return
        for mode in MODES:
            for line in tab.build_status(mode):
                panels[mode] = line
                yield panels["prism"], panels["dense"]
            if tab.failed(mode):
                continue
            try:
                answer = partial(tab.video(mode).ask, question, int(max_new_tokens))
                for text, record in stream(tab.session, answer):
                    panels[mode] = f"**{mode}**\n\n" + answer_text(text, record, tab.session)
                    yield panels["prism"], panels["dense"]
            except Exception as e:  # noqa: BLE001
                panels[mode] = f"**Error:** {message(e)}"
                yield panels["prism"], panels["dense"]

    def switch(tab, mode):
        """Another attention mode: a new conversation; the mode's prefix builds (each mode keeps its own)."""
        if tab is None:
            yield [], gr.skip()
            return
        for status in tab.build_status(mode):
            yield [], status

    def new_chat(tab):
        if tab is not None:
            tab.chat = None  # the Video handles, and so the prefixes, stay
        return [], "New chat: the video's prefix is kept." if tab is not None else gr.skip()

    with gr.Blocks(title="prism_mm: chat with a video", analytics_enabled=False) as page:
        gr.Markdown("## Chat with a video · prism_mm")
        tab = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                video_choice = gr.Dropdown([(os.path.basename(v), os.path.abspath(v)) for v in videos], value=None,
                                           label="Video (given on the command line)", elem_id="video-choice")
                upload = gr.File(label="… or upload a video", file_count="single", type="filepath", elem_id="upload")
                model = gr.Dropdown(models, value=models[0], label="Model", elem_id="model")
                mode = gr.Radio(list(MODES), value="prism", label="Attention", elem_id="mode")
                with gr.Accordion("Settings", open=False):
                    threshold = gr.Slider(0.5, 1.0, value=DEFAULT_THRESHOLD, step=0.01,
                                          label="Prism threshold (top-p mass kept per band; loads the model again)")
                    fps = gr.Number(DEFAULT_FPS, label="Frames per second sampled", minimum=0.01)
                    max_frames = gr.Number(None, label="Max frames (empty: qwen-vl-utils' default cap)", precision=0)
                    max_new_tokens = gr.Number(DEFAULT_MAX_NEW_TOKENS, label="Max new tokens", precision=0,
                                               minimum=1)
            with gr.Column(scale=2):
                status = gr.Markdown("Choose a video from the list or upload one.", elem_id="status")
                chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=480, feedback_options=None,
                                     buttons=["copy", "copy_all"])
                question = gr.Textbox(placeholder="Ask about the video, then Enter", show_label=False,
                                      elem_id="question")
                with gr.Row():
                    ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                    compare_button = gr.Button("Compare prism / dense", elem_id="compare")
                    new_chat_button = gr.Button("New chat", elem_id="new-chat")
                with gr.Row():
                    prism_panel = gr.Markdown(elem_id="compare-prism")
                    dense_panel = gr.Markdown(elem_id="compare-dense")
        note = "" if device != "cpu" else f" On a CPU: {CPU_TIMING_NOTE}."
        gr.Markdown(f"<sub>Answers stream token by token; each shows its first-token time, tokens per second, mean "
                    f"Prism density and whether the video's prefix was reused.{note}</sub>")

        def reload(current, *knobs):  # a new model or threshold (a new session), new sampling: the video again
            yield from load(current and current.path, *knobs)

        knobs, outputs = [model, threshold, fps, max_frames, mode], [status, tab, chatbot]
        video_choice.change(load, inputs=[video_choice, *knobs], outputs=outputs, concurrency_id="load")
        upload.upload(load, inputs=[upload, *knobs], outputs=outputs, concurrency_id="load")
        for knob in (model, threshold, fps, max_frames):
            knob.change(reload, inputs=[tab, *knobs], outputs=outputs, concurrency_id="load")
        mode.change(switch, inputs=[tab, mode], outputs=[chatbot, status])
        for trigger in (question.submit, ask_button.click):
            trigger(ask, inputs=[question, tab, mode, max_new_tokens, chatbot], outputs=[chatbot, question, status],
                    concurrency_id="ask")
        compare_button.click(compare, inputs=[question, tab, max_new_tokens], outputs=[prism_panel, dense_panel],
                             concurrency_id="ask")
        new_chat_button.click(new_chat, inputs=[tab], outputs=[chatbot, status])
    return page
