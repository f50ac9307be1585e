/*
 * Helpline chat widget: one tag embeds it on any store page, no dependencies.
 *   <script src="https://help.example/widget.js" data-api="https://help.example" data-title="Ask us"></script>
 * Optional: data-greeting, data-handoff-url (http(s) or a path on the page), data-handoff-email.
 * Model text is never parsed as markup: it is turned into DOM nodes with textContent (bold, line breaks and http(s)
 * links only). The conversation id is kept in this browser's localStorage, keyed by the API origin.
 */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script || window.__helplineWidget) {
    return;
  }
  window.__helplineWidget = true;

  var scriptUrl = new URL(script.src, window.location.href);
  var api = (script.dataset.api || new URL(".", scriptUrl).href).replace(/\/+$/, "");
  var title = script.dataset.title || "Customer help";
  var greeting = script.dataset.greeting || "Hi! Ask me about delivery, returns, payments or our products.";
  var storageKey = "helpline:session:" + new URL(api, window.location.href).origin;
  var INLINE = /\*\*([^*\n]+)\*\*|\[([^\]\n]+)\]\((https?:\/\/[^)\s]+)\)|(https?:\/\/[^\s<>()"']+[^\s<>()"'.,;:!?])/gi;

  var state = { sessionId: readSession(), busy: false, restored: false };
  var ui = {};

  /* ---------- small DOM helpers (nodes and textContent only) ---------- */

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function safeHref(href, base) {
    try {
      var url = new URL(href, base);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (error) {
      return null;
    }
  }

  function link(label, href) {
    var url = /^https?:\/\//i.test(href) ? safeHref(href) : null;
    if (!url) {
      return document.createTextNode(label);
    }
    var anchor = el("a", "hlw-link", label);
    anchor.href = url;
    anchor.target = "_blank";
    anchor.rel = "noopener noreferrer nofollow";
    return anchor;
  }

  function appendInline(parent, line) {
    var last = 0;
    var match;
    INLINE.lastIndex = 0;
    while ((match = INLINE.exec(line)) !== null) {
      if (match.index > last) {
        parent.appendChild(document.createTextNode(line.slice(last, match.index)));
      }
      if (match[1] !== undefined) {
        parent.appendChild(el("strong", "", match[1]));
      } else if (match[2] !== undefined) {
        parent.appendChild(link(match[2], match[3]));
      } else {
        parent.appendChild(link(match[4], match[4]));
      }
      last = INLINE.lastIndex;
    }
    if (last < line.length) {
      parent.appendChild(document.createTextNode(line.slice(last)));
    }
  }

  /** Renders ``text`` into ``node`` as text nodes, <strong>, <br> and <a href="http(s)..."> only. */
  function renderRich(node, text) {
    node.replaceChildren();
    String(text).split(/\r\n|\r|\n/).forEach(function (line, index) {
      if (index > 0) {
        node.appendChild(document.createElement("br"));
      }
      appendInline(node, line);
    });
  }

  /* ---------- session storage ---------- */

  function readSession() {
    try {
      return window.localStorage.getItem(storageKey);
    } catch (error) {
      return null;
    }
  }

  function saveSession(sessionId) {
    state.sessionId = sessionId;
    try {
      if (sessionId) {
        window.localStorage.setItem(storageKey, sessionId);
      } else {
        window.localStorage.removeItem(storageKey);
      }
    } catch (error) {
      /* storage blocked: the conversation lasts as long as the page */
    }
  }

  /* ---------- the frame ---------- */

  function loadStyles() {
    var sheet = document.createElement("link");
    sheet.rel = "stylesheet";
    sheet.href = new URL("static/widget.css", scriptUrl).href;
    document.head.appendChild(sheet);
  }

  function buildHeader() {
    var header = el("div", "hlw-header");
    var heading = el("h2", "hlw-title", title);
    heading.id = "hlw-title";
    ui.close = el("button", "hlw-close", "\u00d7");
    ui.close.type = "button";
    ui.close.setAttribute("aria-label", "Close chat");
    ui.close.addEventListener("click", close);
    header.append(heading, ui.close);
    return header;
  }

  function buildForm() {
    var form = el("form", "hlw-form");
    var label = el("label", "hlw-sr", "Your question");
    label.htmlFor = "hlw-input";
    ui.input = el("input", "hlw-input");
    ui.input.id = "hlw-input";
    ui.input.type = "text";
    ui.input.maxLength = 2000;
    ui.input.autocomplete = "off";
    ui.input.placeholder = "Type your question\u2026";
    ui.send = el("button", "hlw-send", "Send");
    ui.send.type = "submit";
    form.append(label, ui.input, ui.send);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var text = ui.input.value.trim();
      if (text && !state.busy) {
        ui.input.value = "";
        ask(text, false);
      }
    });
    return form;
  }

  function build() {
    var root = el("div", "hlw-root");
    ui.launcher = el("button", "hlw-launcher", "Chat with us");
    ui.launcher.type = "button";
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.launcher.setAttribute("aria-controls", "hlw-panel");
    ui.launcher.addEventListener("click", function () {
      (ui.panel.hidden ? open : close)();
    });
    ui.panel = el("section", "hlw-panel");
    ui.panel.id = "hlw-panel";
    ui.panel.hidden = true;
    ui.panel.setAttribute("role", "dialog");
    ui.panel.setAttribute("aria-labelledby", "hlw-title");
    ui.log = el("div", "hlw-log");
    ui.log.setAttribute("role", "log");
    ui.log.setAttribute("aria-live", "polite");
    ui.log.setAttribute("aria-label", "Conversation");
    ui.log.tabIndex = 0;
    ui.log.appendChild(el("p", "hlw-msg hlw-bot hlw-greeting", greeting));
    ui.panel.append(buildHeader(), ui.log, buildForm());
    document.addEventListener("keydown", function (event) {
      var focus = document.activeElement;
      var ours = !focus || focus === document.body || root.contains(focus);
      if (event.key === "Escape" && !ui.panel.hidden && ours) {
        event.preventDefault();
        close();
      }
    });
    root.append(ui.panel, ui.launcher);
    document.body.appendChild(root);
  }

  function open() {
    ui.panel.hidden = false;
    ui.launcher.setAttribute("aria-expanded", "true");
    ui.launcher.textContent = "Close chat";
    ui.input.focus();
    if (!state.restored) {
      state.restored = true;
      restore();
    }
  }

  function close() {
    ui.panel.hidden = true;
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.launcher.textContent = "Chat with us";
    ui.launcher.focus();
  }

  function scrollDown() {
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  /* ---------- messages ---------- */

  function addUser(text) {
    var bubble = el("div", "hlw-msg hlw-user");
    bubble.appendChild(el("span", "hlw-sr", "You: "));
    bubble.appendChild(el("span", "hlw-text", text));
    ui.log.appendChild(bubble);
    scrollDown();
  }

  function addBot() {
    var bubble = el("div", "hlw-msg hlw-bot");
    bubble.appendChild(el("span", "hlw-sr", title + ": "));
    var body = el("div", "hlw-text");
    bubble.appendChild(body);
    ui.log.appendChild(bubble);
    scrollDown();
    return { bubble: bubble, body: body };
  }

  function citationList(citations) {
    var box = el("div", "hlw-cites");
    box.appendChild(el("p", "hlw-cites-title", "Sources"));
    var list = el("ul", "hlw-cites-list");
    citations.forEach(function (citation) {
      list.appendChild(el("li", "hlw-cite", citation.title || citation.id));
    });
    box.appendChild(list);
    return box;
  }

  function handoffPath(messageId) {
    var box = el("div", "hlw-handoff");
    box.appendChild(el("p", "hlw-handoff-note", "This one needs a person from our team."));
    var url = script.dataset.handoffUrl ? safeHref(script.dataset.handoffUrl, window.location.href) : null;
    var email = script.dataset.handoffEmail;
    if (url || email) {
      var action = el("a", "hlw-handoff-btn", "Talk to a person");
      action.href = url || "mailto:" + encodeURIComponent(email) + "?subject=" + encodeURIComponent("Help request " + messageId);
      box.appendChild(action);
      return box;
    }
    var button = el("button", "hlw-handoff-btn", "Talk to a person");
    button.type = "button";
    button.addEventListener("click", function () {
      button.replaceWith(el("p", "hlw-handoff-note", "Please contact our customer service team and quote reference " + messageId + "."));
    });
    box.appendChild(button);
    return box;
  }

  function finishBot(view, data) {
    renderRich(view.body, data.reply || "");
    view.bubble.dataset.messageId = data.message_id || "";
    if (data.citations && data.citations.length) {
      view.bubble.appendChild(citationList(data.citations));
    }
    if (data.action === "handoff") {
      view.bubble.appendChild(handoffPath(data.message_id || ""));
    }
    if (data.message_id) {
      view.bubble.appendChild(feedbackBox(data.message_id));
    }
    view.bubble.removeAttribute("aria-busy");
    scrollDown();
  }

  /* ---------- feedback ---------- */

  function postFeedback(messageId, rating, comment) {
    var body = { message_id: messageId, rating: rating };
    if (comment) {
      body.comment = comment;
    }
    return fetch(api + "/v1/feedback", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      credentials: "omit",
    }).then(function (response) {
      if (!response.ok) {
        throw new Error("feedback refused");
      }
    });
  }

  function commentForm(messageId, getRating, status) {
    var form = el("form", "hlw-comment");
    var id = "hlw-comment-" + messageId;
    var label = el("label", "hlw-comment-label", "Tell us more (optional)");
    label.htmlFor = id;
    var field = el("textarea", "hlw-comment-input");
    field.id = id;
    field.maxLength = 2000;
    field.rows = 2;
    var submit = el("button", "hlw-comment-send", "Send comment");
    submit.type = "submit";
    form.append(label, field, submit);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      postFeedback(messageId, getRating(), field.value.trim()).then(
        function () {
          form.remove();
          ui.log.focus();
          status.textContent = "Thanks for your feedback.";
        },
        function () {
          status.textContent = "Sorry, we could not save your comment.";
        }
      );
    });
    return form;
  }

  function thumb(label, rating) {
    var button = el("button", "hlw-thumb hlw-thumb-" + rating, (rating === "up" ? "\u25b2 " : "\u25bc ") + label);
    button.type = "button";
    button.setAttribute("aria-pressed", "false");
    return button;
  }

  function feedbackBox(messageId) {
    var box = el("div", "hlw-feedback");
    var rating = null;
    var comment = null;
    var status = el("p", "hlw-feedback-status");
    status.setAttribute("role", "status");
    var up = thumb("Helpful", "up");
    var down = thumb("Not helpful", "down");
    box.append(el("span", "hlw-feedback-q", "Was this helpful?"), up, down, status);
    [up, down].forEach(function (button) {
      button.addEventListener("click", function () {
        rating = button === up ? "up" : "down";
        up.setAttribute("aria-pressed", String(rating === "up"));
        down.setAttribute("aria-pressed", String(rating === "down"));
        postFeedback(messageId, rating, "").then(
          function () {
            status.textContent = "Thanks!";
          },
          function () {
            status.textContent = "Sorry, we could not save that.";
          }
        );
        if (!comment) {
          comment = commentForm(messageId, function () { return rating; }, status);
          box.appendChild(comment);
        }
      });
    });
    return box;
  }

  /* ---------- streaming ---------- */

  function parseEvent(block) {
    var event = "message";
    var data = [];
    block.split(/\r\n|\r|\n/).forEach(function (line) {
      if (line.indexOf("event:") === 0) {
        event = line.slice(6).trim();
      } else if (line.indexOf("data:") === 0) {
        data.push(line.slice(5).replace(/^ /, ""));
      }
    });
    return data.length ? { event: event, data: data.join("\n") } : null;
  }

  /** Reads server-sent events from a fetch() body and calls onEvent(name, parsedData) for each. */
  async function readEvents(response, onEvent) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) {
        return;
      }
      buffer += decoder.decode(chunk.value, { stream: true });
      var boundary;
      while ((boundary = /\r\n\r\n|\n\n|\r\r/.exec(buffer)) !== null) {
        var parsed = parseEvent(buffer.slice(0, boundary.index));
        buffer = buffer.slice(boundary.index + boundary[0].length);
        if (parsed) {
          onEvent(parsed.event, JSON.parse(parsed.data));
        }
      }
    }
  }

  async function errorMessage(response) {
    try {
      var body = await response.json();
      return (body.error && body.error.message) || "Something went wrong.";
    } catch (error) {
      return "Something went wrong (" + response.status + ").";
    }
  }

  function requestChat(text) {
    var body = { message: text, stream: true };
    if (state.sessionId) {
      body.session_id = state.sessionId;
    }
    return fetch(api + "/v1/chat", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify(body),
      credentials: "omit",
    });
  }

  async function stream(text, view) {
    var response = await requestChat(text);
    if (response.status === 404 && state.sessionId) {
      saveSession(null); /* the conversation is gone (or was never ours): start a new one */
      response = await requestChat(text);
    }
    if (!response.ok || !response.body) {
      throw new Error(await errorMessage(response));
    }
    var shown = "";
    var finished = false;
    await readEvents(response, function (event, data) {
      if (event === "meta" && data.session_id) {
        saveSession(data.session_id);
      } else if (event === "delta") {
        shown += data.text || "";
        renderRich(view.body, shown);
        scrollDown();
      } else if (event === "done") {
        finished = true;
        finishBot(view, data);
      } else if (event === "error") {
        throw new Error((data.error && data.error.message) || "The reply was interrupted.");
      }
    });
    if (!finished) {
      throw new Error("The reply was interrupted.");
    }
  }

  function showFailure(view, message, text) {
    view.bubble.removeAttribute("aria-busy");
    view.bubble.classList.add("hlw-failed");
    view.body.replaceChildren(el("span", "hlw-error", message + " "));
    var retry = el("button", "hlw-retry", "Retry");
    retry.type = "button";
    retry.addEventListener("click", function () {
      if (!state.busy) {
        view.bubble.remove();
        ask(text, true);
      }
    });
    view.body.appendChild(retry);
    retry.focus();
  }

  async function ask(text, isRetry) {
    state.busy = true;
    ui.send.disabled = true;
    if (!isRetry) {
      addUser(text);
    }
    var view = addBot();
    view.bubble.setAttribute("aria-busy", "true");
    view.body.textContent = "\u2026";
    try {
      await stream(text, view);
    } catch (error) {
      showFailure(view, error && error.message ? error.message : "Something went wrong.", text);
    } finally {
      state.busy = false;
      ui.send.disabled = false;
    }
  }

  /* ---------- history across page loads ---------- */

  async function restore() {
    if (!state.sessionId) {
      return;
    }
    try {
      var response = await fetch(api + "/v1/sessions/" + encodeURIComponent(state.sessionId) + "/messages", {
        credentials: "omit",
      });
      if (response.status === 404) {
        saveSession(null);
        return;
      }
      if (!response.ok) {
        return;
      }
      var body = await response.json();
      (body.messages || []).forEach(function (message) {
        addUser(message.message);
        finishBot(addBot(), message);
      });
    } catch (error) {
      /* offline: the shopper can still ask */
    }
  }

  loadStyles();
  if (document.body) {
    build();
  } else {
    document.addEventListener("DOMContentLoaded", build);
  }
})();
