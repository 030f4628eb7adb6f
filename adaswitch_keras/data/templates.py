"""Prompt templates: each task row becomes {"prompts": str, "responses": str}.

- GSM family (arithmetic, gsm8k, gsm_plus):
  prompt `Question: {question}\nAnswer:\n`, response: the step-by-step solution
  ending with `#### {answer}`.
- dialogsum: prompt `Summarize the dialogue.\n{dialogue}\nSummary:\n`,
  response: the (first) reference summary.

With `chat=True` the prompt is wrapped as one ChatML user turn followed by
the assistant header, the chat format of Qwen2/2.5 and SmolLM2 instruct models.
"""

GSM_PROMPT = "Question: {question}\nAnswer:\n"
DIALOGSUM_PROMPT = "Summarize the dialogue.\n{dialogue}\nSummary:\n"
CHAT_PROMPT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def format_row(task, row, chat=False):
    """The row with "prompts" and "responses" added (other fields kept)."""
    if task == "dialogsum":
        prompt, response = DIALOGSUM_PROMPT.format(**row), row["summary"]
    else:
        prompt, response = GSM_PROMPT.format(**row), row["solution"]
    if chat:
        prompt = CHAT_PROMPT.format(prompt=prompt.rstrip("\n"))
    return {"prompts": prompt, "responses": response, **row}
