#!/usr/bin/env python3
"""Generate the eval corpus under evals/corpus/: skills, and cases split once into dev and test.

Why a generator: `evals/cases.jsonl` (33 contexts over the 7 bundled skills) is the set every repair
choice was tuned on, so a choice can fit its quirks without generalising. The corpus here is bigger
and more varied (skills of every kind, length and opening; system texts from one sentence to several
paragraphs; compositions of 2-4 skills in different orders; multi-turn histories), and it is split
once into a dev part (tune on it) and a test part (report on it, never tune on it). Everything is
hand-written material assembled by this script with a fixed seed, so the committed files can always
be reproduced byte for byte and checked (`--check`). Standard library only: no tokenizer, no model.

Split rule, per kind of context (so every kind is in both parts, about half and half): a case that
uses one of the TEST_ONLY skills goes to test, so test also measures skills never seen while tuning;
the other cases are ranked by a seeded sha256 of their id, and the lowest go to dev until dev holds
half of that kind, the rest to test.

Multi-turn cases carry a `history` key (user/assistant turns after the skills, before the final
user turn) and live in their own files, `dev-multiturn.jsonl` and `test-multiturn.jsonl`, so the main
files load with a case loader that does not know `history`.

Usage: python scripts/make_corpus.py           # (re)write evals/corpus/
       python scripts/make_corpus.py --check   # exit 1 if the committed files differ from a fresh run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Generic, TypeVar

SEED = 16
# Skills whose cases all go to the test part: one policy, one tool doc, one set of examples and one
# data table, with three different openings, so "unseen skill" is not one kind of text.
TEST_ONLY = ("library-loans", "cli-reference", "email-triage-examples", "timezone-table")
# The same for the short skills' family of cases: one set of examples and one data table.
SHORT_TEST_ONLY = ("polite-rewrites", "ferry-timetable")
# Prompt text longer than this goes to prompt.md next to skill.toml instead of inline.
INLINE_MAX_CHARS = 2000
# A composition's skills plus system text stay under this many characters (about 5,500 tokens of the
# demo model's tokenizer, which averages 3.6-4.4 characters a token on this material), so the longest
# composed prompt stays under ~6,000 tokens.
COMPOSE_MAX_CHARS = 20000

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "evals" / "corpus"


# --------------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class Field:
    """A `{{name}}` field a skill declares, as in skills/refund-desk/skill.toml."""

    name: str
    default: str
    description: str
    label: str


@dataclass(frozen=True)
class Skill:
    """One generated skill and the questions that need its text to be answered.

    `qa` pairs a question with a short reference answer (the answers become assistant turns in
    multi-turn histories). `thread` is a hand-written conversation (user, assistant, ..., user) whose
    last question depends on an earlier turn as well as on the skill.
    """

    name: str
    version: str
    description: str
    kind: str  # policy, tool-doc, style-guide, examples, data-table, checklist
    opening: str  # heading, list, code, prose, table
    text: str
    qa: tuple[tuple[str, str], ...]
    thread: tuple[str, ...]
    fields: tuple[Field, ...] = ()

    @property
    def long(self) -> bool:
        """Long skills (2,000-4,000 tokens) are kept out of each other's compositions."""
        return approx_tokens(self.text) > 1500


@dataclass
class Case:
    """One context: the keys of evals/cases.jsonl, plus `history` for multi-turn cases."""

    id: str
    skills: list[str]
    user: str
    note: str
    system: str = ""
    history: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> str:
        data: dict[str, object] = {"id": self.id, "skills": self.skills}
        if self.system:
            data["system"] = self.system
        if self.history:
            data["history"] = self.history
        data["user"] = self.user
        data["note"] = self.note
        return json.dumps(data, ensure_ascii=False)


# --------------------------------------------------------------------------------------------------
# System texts, one short sentence to several paragraphs. Generic enough to sit before any skill.

SYSTEMS: dict[str, tuple[str, ...]] = {
    "sentence": (
        "Be concise.",
        "You are a helpful assistant.",
        "Answer in plain English.",
        "You are the internal assistant of Larkspur Systems.",
        "Keep answers under 100 words.",
    ),
    "short": (
        "You are a support assistant. Answer the question directly, then stop. Do not make up facts "
        "that are not in your instructions.",
        "You help staff at the front desk. They are busy, so lead with the answer. Use a list only "
        "when there are three or more items.",
        "You are an assistant for a small business. Be friendly but brief. If something is not "
        "covered by your instructions, say so.",
        "Respond as a careful expert. State your answer first and your reason second.",
    ),
    "paragraph": (
        "You are the assistant built into the staff portal of a mid-sized company. The people who "
        "write to you are employees between meetings, so they want a direct answer they can act on. "
        "Answer from the instructions and reference material you have been given; when they do not "
        "cover a question, say that plainly and suggest who might know. Never invent numbers, names "
        "or dates. Keep the answer to a short paragraph unless the user asks for more.",
        "You answer questions for customers who reach you through a chat window on a website. Many "
        "of them are in a hurry or a little frustrated, so start with the answer, then add at most "
        "two sentences of explanation. Be warm without being chatty. If a request needs a human "
        "(a complaint, a legal question, anything involving personal data), say that you will pass "
        "it on and explain what happens next.",
        "You are a technical assistant for engineers. Prefer precise answers over friendly filler, "
        "show commands or code when they help, and keep prose short. When a question is ambiguous, "
        "state the assumption you are making in one sentence and continue. If the reference material "
        "you were given contradicts general knowledge, follow the reference material and say so.",
        "You help a team of analysts and coordinators. They forward you questions from colleagues, "
        "so your answer may be pasted into an email as it is: write complete sentences, avoid "
        "slang, and do not address the analyst by name. Give figures with their units. If you are "
        "not sure of something, say how sure you are rather than guessing.",
    ),
    "paragraphs": (
        "You are the assistant of the operations team at Larkspur Systems, a software company with "
        "offices on four continents. Colleagues ask you about policies, tools and procedures all day, "
        "usually while they are in the middle of something else.\n\n"
        "Ground every answer in the material you have been given below. When the material answers "
        "the question, give that answer first, in one or two sentences, and mention the rule it comes "
        "from. When it does not, say so and suggest the team that owns the topic; do not fill the gap "
        "with what is common elsewhere.\n\n"
        "Write in plain, friendly English. Use a short list only for steps or for three or more "
        "items. Never share one employee's personal details with another.",
        "You are a customer-facing assistant. Customers write in through the help widget on our "
        "website and the mobile app; some are experienced, many are not.\n\n"
        "How to answer: lead with what the customer can do, then explain briefly. Quote prices, "
        "limits and dates exactly as they appear in your material. If a customer is upset, "
        "acknowledge it in one sentence and move on to the solution. Do not promise anything the "
        "material does not allow, and do not speculate about other customers' orders or accounts.\n\n"
        "What to avoid: legal advice, medical advice beyond what your material says, and opinions "
        "about competitors. If a question is outside what you can help with, say who can help "
        "instead.\n\n"
        "Format: plain text, no headings, at most 120 words unless the customer asks for detail.",
        "This assistant runs inside the engineering wiki. Readers are developers, site reliability "
        "engineers and the occasional product manager.\n\n"
        "Answer precisely and completely, but no longer than needed. Show exact commands, calls or "
        "code when the question is about how to do something, and explain only the parts that are "
        "not obvious. If there are several valid approaches, recommend one and name the others in "
        "a sentence.\n\n"
        "The reference material below is authoritative for this company even where it differs from "
        "common practice. If the material is silent, answer from general knowledge and mark that "
        "part clearly as not from the material.",
    ),
}


# --------------------------------------------------------------------------------------------------
# Skills: style guides


def haiku_style() -> Skill:
    return Skill(
        name="haiku-style",
        version="1.0.0",
        description="Style guide in one paragraph: every answer is a single haiku.",
        kind="style-guide",
        opening="prose",
        text=(
            "Answer every message with a single haiku: three lines of five, seven and five syllables. "
            "Put the fact the user asked for in the second line, keep numbers as digits, and add no "
            "title, quotes or explanation after the poem.\n"
        ),
        qa=(
            ("At what temperature does water boil at sea level?",
             "Kettle starts to sing\nwater boils at 100 C\nsteam climbs from the spout"),
            ("What is the capital of Japan?",
             "Lanterns in the rain\nTokyo is the capital\ntrains hum through the night"),
            ("How many legs does a spider have?",
             "Silk thread in the dawn\na spider walks on 8 legs\ndew beads on the web"),
            ("Explain what a leap year is.",
             "Every fourth winter\nFebruary gains day 29\nthe calendar rests"),
            ("Which planet is closest to the Sun?",
             "Small and scorched by light\nMercury is the closest\nracing round the Sun"),
            ("Give me one tip for staying focused while working.",
             "Close the other tabs\nwork on one task at a time\nthe hours grow quiet"),
        ),
        thread=(
            "How many continents are there?",
            "Maps spread on the desk\nthere are 7 continents\noceans in between",
            "Which of them is the largest?",
        ),
    )


def commit_messages() -> Skill:
    return Skill(
        name="commit-messages",
        version="2.0.0",
        description="Style guide for git commit messages: subject, body and ticket references.",
        kind="style-guide",
        opening="list",
        text=(
            "- Write the subject line in the imperative mood: \"Add retry to upload\", not \"Added retry\" "
            "or \"Adds retry\".\n"
            "- Keep the subject line to {{max_subject_chars}} characters or fewer, start it with a capital "
            "letter after the prefix and do not end it with a period.\n"
            "- Prefix the subject with the area it touches, in lowercase, followed by a colon: "
            "\"billing: Round totals to cents\".\n"
            "- Leave one blank line between the subject and the body.\n"
            "- Wrap the body at 72 characters. Explain why the change is needed and what it changes for "
            "users; the diff already shows how.\n"
            "- Reference the ticket on the last line as \"Refs: ABC-123\". Use \"Fixes: ABC-123\" only "
            "when the change closes the ticket.\n"
            "- One logical change per commit. If the subject needs \"and\", split the commit.\n"
            "- Never write \"WIP\", \"misc fixes\" or \"update\" as a subject; such commits are squashed "
            "before merging.\n"
        ),
        fields=(
            Field("max_subject_chars", "50", "Longest allowed commit subject line, in characters.",
                  "The subject line limit in characters"),
        ),
        qa=(
            ("Write a commit message for a change that stops the uploader crashing on empty files. "
             "It closes ticket UP-88.",
             "uploader: Skip empty files instead of crashing\n\nThe uploader read the first chunk without "
             "checking the size, so a\nzero-byte file aborted the whole batch.\n\nFixes: UP-88"),
            ("How long may a commit subject line be?", "At most 50 characters."),
            ("Is 'Fixed the login bug.' an acceptable subject line?",
             "No. Use the imperative mood, add the area prefix and drop the period, for example "
             "\"auth: Fix login redirect loop\"."),
            ("At what column should the body be wrapped?", "At 72 characters."),
            ("My subject is 'api: Add pagination and fix timeout handling'. Anything wrong with it?",
             "Yes: the \"and\" shows two changes, so split it into two commits."),
            ("How do I mention a ticket that my commit only partly addresses?",
             "Put \"Refs: <ticket>\" on the last line of the body."),
            ("Can I push a commit called 'WIP' to my branch?",
             "You can, but it will be squashed before merging; never keep \"WIP\" as a subject."),
        ),
        thread=(
            "Is 'docs: Update readme' a good subject line?",
            "It follows the format, but \"update\" says nothing; say what changed, e.g. "
            "\"docs: Explain the offline install\".",
            "OK. And what goes on the last line if this closes DOC-12?",
        ),
    )


def brand_voice() -> Skill:
    return Skill(
        name="brand-voice",
        version="1.2.0",
        description="Brand voice for customer-facing copy: a do/don't table, banned words and sign-off.",
        kind="style-guide",
        opening="table",
        text=(
            "| Do | Don't |\n"
            "|---|---|\n"
            "| Write like a friend who knows the trail: warm, plain and practical. | Sound like a catalogue or a legal notice. |\n"
            "| Say \"you\" and \"we\". | Say \"the customer\" or \"the company\". |\n"
            "| Use short sentences, one idea each. | Stack clauses with semicolons. |\n"
            "| Name the real benefit: \"keeps you dry in a three-hour downpour\". | Use empty claims such as \"world-class\" or \"revolutionary\". |\n"
            "| Use at most one exclamation mark per message. | Use all caps for emphasis. |\n"
            "| Say \"affordable\" or give the price. | Say \"cheap\". |\n"
            "\n"
            "This is the voice of {{brand_name}}. Everything written for customers (product pages, emails, "
            "social posts and support replies) follows the table above.\n"
            "\n"
            "Words we never use: \"cheap\", \"ultimate\", \"game-changer\", \"best-in-class\", \"hurry\".\n"
            "\n"
            "Product names are written exactly as in the catalogue, with a capital letter for each word "
            "(Ridgeline Jacket, Tarn 30 Pack). Use digits for measurements and prices (\"450 g\", \"$129\").\n"
            "\n"
            "Every customer email ends with \"See you outside,\" and, on the next line, \"The {{brand_name}} "
            "team\". When we got something wrong, apologise once, clearly, then say what we will do and by when.\n"
        ),
        fields=(
            Field("brand_name", "Fernhill Outdoor", "The brand whose voice this is.", "The brand name"),
        ),
        qa=(
            ("Write a two-sentence product blurb for the Ridgeline Jacket, which weighs 450 g and costs $129.",
             "The Ridgeline Jacket keeps you dry through a three-hour downpour and packs into its own "
             "pocket. It weighs 450 g and costs $129."),
            ("Can I describe our new tent as 'the ultimate shelter'?",
             "No. \"Ultimate\" is on the list of words we never use; name the real benefit instead."),
            ("How should a customer email end?",
             "With \"See you outside,\" and on the next line \"The Fernhill Outdoor team\"."),
            ("Is 'BIG SALE THIS WEEKEND!!!' okay for a social post?",
             "No: no all caps and at most one exclamation mark. Try \"Our weekend sale starts Friday: "
             "20% off all packs.\""),
            ("Should I write 'the customer will receive a refund' in a support reply?",
             "No, say \"you\": \"You'll get your refund within five days.\""),
            ("A customer's order arrived late. Write the first two sentences of our reply.",
             "We're sorry your order arrived late. We've refunded your shipping, and your next order "
             "ships free."),
        ),
        thread=(
            "Can I call our sleeping bag 'cheap'?",
            "No, \"cheap\" is a banned word. Say \"affordable\" or give the price.",
            "Fine. Rewrite 'This cheap bag is a total game-changer!!' for me.",
        ),
    )


# --------------------------------------------------------------------------------------------------
# Skills: policies


def leave_policy() -> Skill:
    return Skill(
        name="leave-policy",
        version="3.1.0",
        description="Larkspur Systems leave policy: annual, sick, parental and other leave.",
        kind="policy",
        opening="heading",
        text="""# Leave Policy (Larkspur Systems, all employees)

This policy covers every kind of paid and unpaid time off. Managers approve leave in the Beacon HR portal; leave that is not recorded in Beacon does not count as approved.

## Annual leave

- Full-time employees get {{annual_days}} days of paid annual leave per calendar year. Part-time employees get the same amount pro rata to their contracted hours.
- Leave accrues monthly: one twelfth of the yearly amount on the first day of each month.
- Up to {{carryover_days}} unused days carry over into the next year and must be used by 31 March. Any other unused days expire on 31 December and are not paid out.
- Request leave of more than three consecutive working days at least two weeks in advance. Shorter requests need two working days' notice.

## Sick leave

- Tell your manager before 10:00 on the first day of absence.
- For up to three consecutive days you certify the absence yourself in Beacon. From the fourth day a doctor's note is required.
- Paid sick leave is up to 20 days per year at full pay; beyond that, the long-term disability plan applies.

## Parental leave

- The primary caregiver gets 16 weeks at full pay; the secondary caregiver gets 4 weeks at full pay. Either may be taken in one block or in up to three blocks within 12 months of the birth or adoption.
- Tell HR at least 8 weeks before the leave starts.

## Other leave

- Bereavement: 5 days for a partner, child, parent or sibling; 2 days for other relatives.
- Jury duty and other civic duties: paid in full for as long as required. Send the summons to HR.
- Moving home: 1 day per year.
- Unpaid leave: up to 30 days per year, approved by both your manager and HR.

## Public holidays

Public holidays follow the office you are contracted to, not where you travel. If a public holiday falls during your annual leave, that day is not deducted from your leave.
""",
        fields=(
            Field("annual_days", "25", "Days of paid annual leave per calendar year for full-time staff.",
                  "The annual leave allowance in days"),
            Field("carryover_days", "5", "Unused annual leave days that may move into the next year.",
                  "The carry-over limit in days"),
        ),
        qa=(
            ("How many days of paid annual leave does a full-time employee get each year?",
             "25 days per calendar year."),
            ("I have 9 unused leave days at the end of December. What happens to them?",
             "5 carry over and must be used by 31 March; the other 4 expire and are not paid out."),
            ("I was off sick for four days in a row. Do I need a doctor's note?",
             "Yes. You can self-certify up to three consecutive days; from the fourth day a doctor's note "
             "is required."),
            ("How much notice do I need to give for a week of holiday?",
             "At least two weeks, because it is more than three consecutive working days."),
            ("My grandmother died. How many days of bereavement leave can I take?",
             "2 days, as she is not a partner, child, parent or sibling."),
            ("How long is parental leave for the secondary caregiver, and is it paid?",
             "4 weeks at full pay, in one block or up to three blocks within 12 months."),
            ("Does a public holiday during my annual leave use up one of my leave days?",
             "No, that day is not deducted."),
            ("Can I take two months of unpaid leave?",
             "No. Unpaid leave is limited to 30 days per year, approved by your manager and HR."),
        ),
        thread=(
            "I'm off sick today. Who do I tell, and by when?",
            "Tell your manager before 10:00 on the first day of absence.",
            "Thanks. If I'm still ill on Friday, that's day four. What changes then?",
        ),
    )


def clinic_triage() -> Skill:
    return Skill(
        name="clinic-triage",
        version="1.4.0",
        description="Nurse phone line triage protocol: four urgency levels, what to ask, what to log.",
        kind="policy",
        opening="heading",
        text="""# Nurse Line Triage Protocol (Harbourview Family Clinic)

You support the nurses who answer the clinic's phone line. For every call, decide the urgency level below, tell the caller what to do, and log the call. This protocol does not replace clinical judgement: never diagnose, and never recommend a medicine dose; refer dose questions to a pharmacist or the patient's own doctor.

## Ask first

Before choosing a level, ask for: the patient's age, the main symptom, when it started, the temperature if it was measured, medicines taken, and whether the patient is pregnant where relevant.

## Level 1: Emergency (act now)

Tell the caller to call 911 now, or to go straight to the emergency department, and stay on the line until help is arranged. Level 1 applies to:

- chest pain or pressure lasting more than 5 minutes;
- signs of stroke: face drooping, arm weakness, slurred or confused speech;
- severe difficulty breathing, or blue or grey lips;
- a person who is unconscious or cannot be woken;
- bleeding that does not stop after 10 minutes of firm pressure;
- any fever of 38.0 C or higher in a baby under 3 months.

## Level 2: Same day

Book a same-day appointment, or send the caller to the walk-in service if the schedule is full. Level 2 applies to:

- a fever of 39.0 C or higher for more than 48 hours in anyone over 3 months;
- ear pain with fever in a child;
- pain when passing urine together with fever;
- a gaping cut longer than 1 cm, once the bleeding is controlled;
- vomiting with no urine passed for 8 hours in a child or 12 hours in an adult.

## Level 3: Routine

Book an appointment within 7 days: a rash without fever, back pain without numbness or weakness, a medication review, or mild symptoms that have lasted more than 2 weeks.

## Level 4: Self-care

Give self-care advice and ask the caller to phone again if the patient is not better within 48 hours, or at once if it gets worse: a cold for less than 10 days, a mild sore throat without fever, or a minor sprain the patient can still put weight on.

## Rules

- When in doubt between two levels, choose the more urgent one.
- Log every call: the level, the advice given and a callback number.
- The nurse line is open from 07:00 to 22:00. Outside those hours, callers hear a message that sends them to 911 for emergencies and to the after-hours service at 555-0142 for everything else.
""",
        qa=(
            ("A caller's 2-month-old has a temperature of 38.2 C. Which level is this, and what do we tell "
             "the parent?",
             "Level 1: any fever of 38.0 C or more under 3 months means going to the emergency "
             "department now."),
            ("A 40-year-old has had a cold for five days and no fever. Which level?",
             "Level 4, self-care: call back if not better within 48 hours."),
            ("Someone has felt crushing chest pressure for ten minutes. What do I tell them?",
             "Level 1: call 911 now; stay on the line."),
            ("An adult has had a fever of 39.4 C for three days. Which level?",
             "Level 2, same day: 39.0 C or more for more than 48 hours."),
            ("I can't decide between Level 2 and Level 3 for a caller. Which do I pick?",
             "The more urgent one, Level 2."),
            ("What do I have to write in the call log?",
             "The level, the advice given and a callback number."),
            ("A caller with back pain asks how many ibuprofen tablets to take. What do I say?",
             "No dose advice: refer them to a pharmacist or their doctor. Back pain without numbness is "
             "Level 3, routine."),
            ("Where do callers get sent after 22:00 if it isn't an emergency?",
             "To the after-hours service at 555-0142."),
        ),
        thread=(
            "A mother says her 5-year-old has ear pain. What should I ask her?",
            "Ask the child's age, when the pain started, the temperature if measured, and any medicines "
            "given.",
            "She says the temperature is 38.6 C. What level is it now?",
        ),
    )


def library_loans() -> Skill:
    return Skill(
        name="library-loans",
        version="1.0.0",
        description="Public library lending rules: loan periods, renewals, fines and lost items.",
        kind="policy",
        opening="list",
        text=(
            "- Loan periods: books and audiobooks {{loan_days}} days; magazines 14 days; DVDs and video "
            "games 7 days. Reference books and the newest issue of each magazine cannot be borrowed.\n"
            "- Renewals: every item can be renewed twice, online or at the desk, unless another member "
            "has reserved it. A renewal restarts the loan period from the day of renewal.\n"
            "- Limits: an adult card may hold 15 items at a time, of which at most 5 DVDs or video games. "
            "A children's card may hold 10 items.\n"
            "- Late fines: ${{fine_per_day}} per item per day on adult cards, capped at $10 per item. "
            "Children's cards never pay fines.\n"
            "- Borrowing is blocked while a card owes more than $15.\n"
            "- Lost or damaged items: the member pays the replacement cost shown in the catalogue plus "
            "a $5 processing fee. If a lost item is found within 60 days, the replacement cost is "
            "refunded, but not the fee.\n"
            "- Interlibrary loans cost $2 per request and take 5 to 10 working days. They cannot be "
            "renewed.\n"
            "- Reservations are free. A reserved item waits on the hold shelf for 7 days.\n"
        ),
        fields=(
            Field("loan_days", "21", "Loan period for books and audiobooks, in days.", "The book loan period in days"),
            Field("fine_per_day", "0.25", "Late fine per item per day on adult cards, in US dollars.",
                  "The daily late fine in US dollars"),
        ),
        qa=(
            ("I returned a book 6 days late on my adult card. How much do I owe?", "$1.50: 6 days at $0.25."),
            ("How many times can I renew a DVD?", "Twice, unless someone has reserved it."),
            ("My 8-year-old's book is two weeks late on her own card. Is there a fine?",
             "No, children's cards never pay fines."),
            ("Can I borrow the reference atlas overnight?", "No, reference books cannot be borrowed."),
            ("I lost a book whose replacement cost is $24. What do I pay, and what if I find it next month?",
             "$29 ($24 plus the $5 fee); if you find it within 60 days you get the $24 back, not the fee."),
            ("How long is a reserved item kept for me?", "7 days on the hold shelf."),
            ("My card owes $18. Can I still borrow today?", "No, borrowing is blocked above $15."),
            ("How long may I keep a novel?", "21 days, renewable twice."),
        ),
        thread=(
            "How many DVDs can I have out at once on an adult card?",
            "At most 5, within the overall limit of 15 items.",
            "And how long can I keep each of them before it's late?",
        ),
    )


def grading_rubric() -> Skill:
    return Skill(
        name="grading-rubric",
        version="2.0.0",
        description="Essay grading rubric for a history course: weighted criteria, grade bands, late work.",
        kind="policy",
        opening="table",
        text="""| Criterion | 4 (Excellent) | 3 (Good) | 2 (Fair) | 1 (Weak) | Weight |
|---|---|---|---|---|---|
| Thesis | Clear, arguable and specific | Clear but broad | Present but vague | Missing or off-topic | x3 |
| Evidence | Three or more relevant, cited sources | Two relevant sources | One source, or sources of weak relevance | No sources | x3 |
| Structure | Every paragraph advances the argument | Mostly logical order | Some paragraphs out of place | No clear order | x2 |
| Language | Precise, almost no errors | A few errors, meaning clear | Errors sometimes hide the meaning | Errors throughout | x2 |

How to grade an essay for HIST 210 (Modern European History):

1. Score each criterion from 1 to 4 using the table. Multiply each score by its weight and add the results. The maximum is 40 points.
2. Letter grades: A = 36 to 40 points, B = 30 to 35, C = 24 to 29, D = 18 to 23, F = below 18.
3. Late work loses 10% of its points per day late, for up to three days. Work more than three days late gets 0 unless the student has an approved extension.
4. For essays over 2,500 words, mark only the first 2,500 words.
5. If you suspect plagiarism, do not grade the essay; send it to the course lead.
6. Feedback: one strength and one thing to improve, each tied to a criterion, in at most 80 words in total.
""",
        qa=(
            ("An essay scores Thesis 4, Evidence 3, Structure 3, Language 2. What are its points and letter "
             "grade?", "12 + 9 + 6 + 4 = 31 points, a B."),
            ("An essay earned 32 points but was handed in two days late. What is its final score?",
             "32 minus 20% is 25.6 points, a C."),
            ("What is the maximum number of points an essay can get?", "40 points."),
            ("An essay cites two relevant sources. What Evidence score does it get?", "3 (Good)."),
            ("The essay is 3,100 words long. What do I do?", "Mark only the first 2,500 words."),
            ("I think an essay was copied from a website. Should I give it an F?",
             "No. Don't grade it; send it to the course lead."),
            ("How long may my written feedback be?",
             "At most 80 words: one strength and one improvement, each tied to a criterion."),
        ),
        thread=(
            "How many points does an essay need for an A?",
            "36 to 40 points.",
            "This one scored 4 on every criterion except Language, where it got 3. Is it an A?",
        ),
    )


_HANDBOOK_SECTIONS = (
    ("Working hours and remote work", """Our core hours are 10:00 to 15:00 in your office's time zone. Outside core hours you choose when to work, as long as your team knows how to reach you and your calendar shows when you are away. A full-time week is 40 hours; we do not track hours, but if you regularly work more than 45, tell your manager so the workload can be fixed.

You may work remotely up to three days a week without asking. Working remotely for more than two consecutive weeks, or from another country for any length of time, needs written approval from your manager and from People Operations, because of tax and immigration rules. Working from a country where Larkspur has no office is limited to 20 working days per calendar year.

When you work remotely, use the company VPN for everything except video calls, keep your laptop locked whenever you step away, and do not work from public networks without the VPN."""),
    ("Expenses", """You may spend company money when it is needed for your work and you would be comfortable explaining it to a colleague. Pay with your company card where you have one; otherwise pay yourself and claim the money back.

Submit every claim in Ledgerly within 30 days of the expense. Claims older than 90 days are not reimbursed. Attach a receipt for every item above $25; for smaller items, a short description is enough. Alcohol is reimbursed only at team events that your director approved in advance, up to $20 per person.

Meals while travelling are covered by a daily allowance that depends on the city tier (see the table in the Travel section). You do not need meal receipts when you stay within the allowance. Meals with clients are expensed at cost, with the names of the people present, up to $120 per person."""),
    ("Travel", """Book all travel through the Wayfarer booking tool, at least 14 days in advance when you can. Trips abroad need your director's approval before you book.

Flights: economy class for flights under 6 hours; premium economy for 6 to 8 hours; business class for flights longer than 8 hours, or for overnight flights when you must work the next morning. Trains are preferred to flights for journeys under 4 hours.

Hotels and daily allowances by city tier:

| Tier | Examples | Hotel per night (max) | Meal allowance per day |
|---|---|---|---|
| 1 | London, New York, Tokyo, Zurich | $320 | $95 |
| 2 | Berlin, Toronto, Sydney, Singapore | $240 | $75 |
| 3 | All other cities | $170 | $55 |

On the days you travel out and back, the meal allowance is 75% of the daily amount. If a conference hotel costs more than the cap, book it anyway and note the conference name in Wayfarer. Taxis are fine late at night or with heavy luggage; otherwise use public transport where it is practical."""),
    ("Equipment", """Every employee gets a laptop on their first day; engineers choose between a 14-inch and a 16-inch model, everyone else gets the 14-inch one. Laptops are replaced every 3 years, or earlier if they fail. Phones are provided only for people on an on-call rotation.

For working at home, you may claim a one-off home office allowance of $300 for a monitor, chair, desk or similar, once every 3 years. Lost or stolen equipment must be reported to IT within 24 hours at it-help@larkspur.example, and stolen laptops also to the police. Return all equipment within 10 working days of your last day."""),
    ("Security basics", """Use the company password manager for every work password, and turn on multi-factor authentication wherever it is offered. Never reuse a work password anywhere else. Forward suspicious emails to phishing@larkspur.example and then delete them; do not click links or open attachments in them.

Customer data stays in the systems built for it. Do not copy customer data to your laptop, a spreadsheet or a personal account, and never paste it into external tools, including AI chat tools, that are not on the approved list on the security wiki. If you think data has leaked, tell security@larkspur.example at once, even outside working hours; reporting quickly is never held against you."""),
    ("Gifts and conflicts of interest", """You may accept gifts or hospitality from suppliers, customers or partners worth up to $50 in total per person per year. Politely decline anything above that, or, if declining would be rude, accept it on behalf of the company and report it to legal@larkspur.example within 5 working days. Never accept cash or gift cards, whatever the amount.

Tell your manager about any outside job, board seat or investment in a company that does business with Larkspur or competes with it. Most are fine; we only need to know."""),
    ("Learning and development", """Each employee has a training budget of $1,500 per calendar year for courses, books, conferences and certifications related to their work. Unused budget does not carry over. Conference travel comes out of the team's travel budget, not your training budget. Up to 5 working days a year may be spent on training during working hours; agree the dates with your manager like any other leave."""),
    ("Performance reviews", """Reviews happen twice a year, in April and October. Each review has a self-assessment, feedback from two or three colleagues you choose with your manager, and a conversation with your manager. Salary changes happen once a year, effective 1 July, based on the April review. New employees have their first review after six months, then join the normal cycle."""),
    ("On-call", """Teams that run production systems share an on-call rotation of one week at a time. On-call pay is $450 for a week that includes a weekend and $250 for a week without one, plus time off in lieu: each hour of work during a night-time incident (22:00 to 07:00) earns one and a half hours off, to be taken within one month. Nobody is on call for more than one week in four, and nobody new to a team joins the rotation before shadowing one full week."""),
    ("Referrals", """If you refer someone who is hired, you receive a referral bonus of $2,000, paid with the salary after the new colleague completes 90 days. Referrals for engineering roles at senior level and above earn $4,000. Submit referrals through the careers page with your employee number; a referral counts only if it arrives before the candidate applied on their own. Managers cannot earn a bonus for people who will report to them, and People Operations staff cannot earn referral bonuses at all."""),
    ("Health and wellbeing", """All employees and their families can use the confidential employee assistance programme, 24 hours a day, at 1-800-555-0199. It offers up to 6 free counselling sessions per person per year, and legal and financial advice by phone. Nothing you discuss is shared with Larkspur.

The wellbeing allowance of $40 per month covers gym memberships, sports clubs, fitness classes and meditation apps. Claim it in Ledgerly like any other expense, once a month or once a quarter; it cannot be saved up beyond the calendar year. Each office also has a quiet room that anyone may book for up to one hour at a time."""),
    ("Commuting and parking", """Larkspur pays for public transport passes up to $150 per month, through the commuter benefit in Beacon. Employees who cycle to work may claim $25 per month towards bike maintenance instead. Office parking spaces are given first to people with a disability permit, then to parents of children under five, then by lottery every six months; a parking space is a taxable benefit in some countries, and payroll adds it to your payslip where it is."""),
    ("Leaving Larkspur", """Notice periods are set by your contract: usually one month during probation and two months after it. Tell your manager first, then confirm in writing to people@larkspur.example. Unused annual leave is paid out in your last salary where the law requires it, and otherwise should be taken before your last day. On your last day, return all equipment (see Equipment), hand over your work to the person your manager names, and remove personal files from company devices. Your access to company systems ends at 18:00 local time on your last working day. We hold an exit interview with every leaver; it is optional, and its notes are shared with your manager only in summary."""),
    ("Communication", """Use the team channel for work questions, so that others can find the answers later; keep direct messages for personal matters. Reply to messages within one working day, even if only to say when you will answer properly. Meetings longer than 30 minutes need an agenda in the invitation. Company-wide announcements go out in the Monday update; if you need something in it, send it to comms@larkspur.example by Friday at 12:00."""),
)


def employee_handbook() -> Skill:
    intro = (
        "Welcome to the Larkspur Systems employee handbook. It explains how we work together and what "
        "the company provides, in plain language. Where this handbook and a local employment contract "
        "differ, the contract wins. Annual, sick and parental leave are covered in the separate Leave "
        "Policy. Questions about anything here go to People Operations at people@larkspur.example; "
        "this text is reviewed every January and was last updated on 8 January.\n"
    )
    sections = "".join(f"\n## {title}\n\n{body}\n" for title, body in _HANDBOOK_SECTIONS)
    return Skill(
        name="employee-handbook",
        version="2024.1.0",
        description="Larkspur Systems employee handbook: hours, expenses, travel, equipment, security and more.",
        kind="policy",
        opening="prose",
        text=intro + sections,
        qa=(
            ("What is the daily meal allowance on a trip to Zurich?",
             "$95 per day, as Zurich is a Tier 1 city (75% on travel days)."),
            ("My flight to the client is 7 hours. Can I book business class?",
             "No: flights of 6 to 8 hours are premium economy; business is for flights over 8 hours."),
            ("Do I need a receipt for a $20 taxi?", "No, receipts are needed only above $25."),
            ("A supplier sent me a $120 bottle of wine. Can I keep it?",
             "No. Gifts are limited to $50 a year; decline it, or accept it for the company and report "
             "it to legal within 5 working days."),
            ("What is my yearly training budget, and does it roll over?", "$1,500 a year; unused budget does not carry over."),
            ("How much is on-call pay for a week that includes a weekend?",
             "$450, plus time off in lieu for night-time incident work."),
            ("I bought a monitor for home. How much can I claim?",
             "Up to $300, once every 3 years, from the home office allowance."),
            ("How long do I have to submit an expense claim?",
             "30 days; claims older than 90 days are not reimbursed."),
            ("Can I work from Portugal for three weeks? We have no office there.",
             "Only with written approval from your manager and People Operations; working from a country "
             "without an office is limited to 20 working days a year."),
            ("What are the core hours?", "10:00 to 15:00 in your office's time zone."),
            ("When are salary changes applied?", "Once a year, effective 1 July, based on the April review."),
            ("I referred a senior engineer who was hired. What bonus do I get, and when?",
             "$4,000, paid after they complete 90 days."),
            ("How many free counselling sessions does the assistance programme offer?",
             "Up to 6 per person per year."),
            ("When does my system access end if I leave?", "At 18:00 local time on your last working day."),
        ),
        thread=(
            "I'm going to Berlin for a conference. What's the hotel limit per night?",
            "$240 per night, as Berlin is a Tier 2 city.",
            "The conference hotel is $280. Can I still book it?",
        ),
    )


# --------------------------------------------------------------------------------------------------
# Skills: tool and API documentation


def weather_api() -> Skill:
    return Skill(
        name="weather-api",
        version="1.1.0",
        description="Tool doc: three Skycast weather tools as JSON schemas, with calling rules.",
        kind="tool-doc",
        opening="code",
        text="""```json
{
  "name": "get_forecast",
  "description": "Daily forecast for one place, starting today.",
  "parameters": {
    "type": "object",
    "properties": {
      "location": {"type": "string", "description": "City, optionally with a country code: \\"Lisbon,PT\\"."},
      "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 3},
      "include_hourly": {"type": "boolean", "default": false}
    },
    "required": ["location"]
  }
}
```

```json
{
  "name": "get_current",
  "description": "Current conditions for one place.",
  "parameters": {
    "type": "object",
    "properties": {"location": {"type": "string"}},
    "required": ["location"]
  }
}
```

```json
{
  "name": "get_alerts",
  "description": "Active severe-weather alerts for a region.",
  "parameters": {
    "type": "object",
    "properties": {"region": {"type": "string", "description": "ISO 3166-2 code such as \\"US-OR\\" or \\"PT-11\\"."}},
    "required": ["region"]
  }
}
```

These are the weather tools of the Skycast service. To use one, reply with a single line in this form and nothing else:

<tool_call>{"name": "get_forecast", "arguments": {"location": "Lisbon,PT", "days": 2}}</tool_call>

The result comes back in a <tool_result> message. Rules:

- Units are {{units}}: with metric, temperatures are in degrees Celsius, rain in mm and wind in km/h; with imperial, degrees Fahrenheit, inches and mph. Always state the unit in your answer.
- Forecasts cover today and up to 6 more days (days from 1 to 7). For anything further ahead, say that it is beyond the forecast range; do not guess.
- There is no historical data. For past dates, say that you cannot look them up.
- If a place name is ambiguous (Portland, Springfield, San Jose), ask which one is meant before calling.
- Forecast results have the fields date, temp_max, temp_min, precip_mm, precip_chance (0 to 100), wind_kph and summary. Call it "rain likely" only when precip_chance is 60 or more.
- The service allows 60 calls per minute. Never call the same tool twice with the same arguments in one conversation; reuse the earlier result.
""",
        fields=(
            Field("units", "metric", "Unit system of every value the tools return: metric or imperial.",
                  "The unit system"),
        ),
        qa=(
            ("Write the tool call for a 5-day forecast for Lisbon.",
             "<tool_call>{\"name\": \"get_forecast\", \"arguments\": {\"location\": \"Lisbon,PT\", \"days\": 5}}</tool_call>"),
            ("Can you give me the forecast for the next two weeks in Madrid?",
             "Only up to 7 days: that is the forecast range. I can get those 7 days."),
            ("What was the weather in Oslo last Tuesday?",
             "I can't look that up: the tools have no historical data."),
            ("Is it going to be windy in Portland tomorrow?",
             "Which Portland do you mean, Oregon or Maine? Then I'll check the forecast."),
            ("Which argument of get_forecast is required?", "Only location."),
            ("Are there any weather warnings for Oregon right now? Show the call you would make.",
             "<tool_call>{\"name\": \"get_alerts\", \"arguments\": {\"region\": \"US-OR\"}}</tool_call>"),
            ("In which units will the temperatures come back?", "Degrees Celsius, as the units are metric."),
            ("The forecast says precip_chance 45 for Saturday. Should I tell the user rain is likely?",
             "No, \"rain likely\" needs a precip_chance of 60 or more."),
        ),
        thread=(
            "What's the weather like in Porto right now? Show me the call.",
            "<tool_call>{\"name\": \"get_current\", \"arguments\": {\"location\": \"Porto,PT\"}}</tool_call>",
            "<tool_result>{\"temp\": 17, \"summary\": \"light rain\", \"wind_kph\": 22}</tool_result> "
            "So how warm is it, and what should I wear?",
        ),
    )


# Each endpoint: method, path, what it does, parameters (name, type, required, notes), example body
# (or None) and example response. The reference below is rendered from these.
_PAYMENT_ENDPOINTS: tuple[tuple[str, str, str, tuple[tuple[str, str, str, str], ...], str | None, str], ...] = (
    ("POST", "/payments", "Create a payment. With capture set to false the card is only authorized; capture it later with /payments/{id}/capture within 7 days, or the authorization expires and the payment becomes canceled.",
     (("amount", "integer", "yes", "In the smallest currency unit: 2500 is 25.00."),
      ("currency", "string", "yes", "Three-letter ISO code in lowercase: \"eur\", \"usd\", \"gbp\"."),
      ("customer", "string", "no", "A customer id (cus_...). Needed to charge a saved card."),
      ("payment_method", "string", "yes", "A card token (tok_...) or a saved card (card_...)."),
      ("capture", "boolean", "no", "Default true."),
      ("description", "string", "no", "Shown on the dashboard, at most 500 characters."),
      ("metadata", "object", "no", "Up to 20 keys of your own, values at most 500 characters.")),
     '{"amount": 2500, "currency": "eur", "payment_method": "tok_visa", "description": "Order 1042"}',
     '{"id": "pay_8Ks2", "status": "succeeded", "amount": 2500, "amount_refunded": 0, "currency": "eur", "captured": true, "created": 1718000000}'),
    ("GET", "/payments/{id}", "Retrieve one payment. Status is one of pending, requires_action, succeeded, failed or canceled.",
     (), None,
     '{"id": "pay_8Ks2", "status": "succeeded", "amount": 2500, "amount_refunded": 500, "currency": "eur"}'),
    ("GET", "/payments", "List payments, newest first.",
     (("limit", "integer", "no", "1 to 100, default 20."),
      ("starting_after", "string", "no", "A payment id: return the page after it."),
      ("customer", "string", "no", "Only this customer's payments."),
      ("status", "string", "no", "Only payments with this status.")),
     None,
     '{"data": [{"id": "pay_8Ks2", "status": "succeeded"}], "has_more": true}'),
    ("POST", "/payments/{id}/capture", "Capture an authorized payment, in full or in part. The rest of the authorization is released.",
     (("amount", "integer", "no", "At most the authorized amount. Default: the full amount."),),
     '{"amount": 2000}',
     '{"id": "pay_9Lm4", "status": "succeeded", "amount": 2000, "captured": true}'),
    ("POST", "/payments/{id}/cancel", "Cancel a payment that is authorized but not captured. Captured payments cannot be canceled; refund them instead.",
     (), None,
     '{"id": "pay_9Lm4", "status": "canceled"}'),
    ("POST", "/refunds", "Refund a captured payment, in full or in part. Several partial refunds are allowed, but together they may not exceed the captured amount. Refunds reach the card in 5 to 10 business days.",
     (("payment", "string", "yes", "The payment id."),
      ("amount", "integer", "no", "Default: everything not yet refunded."),
      ("reason", "string", "no", "duplicate, fraudulent or requested_by_customer.")),
     '{"payment": "pay_8Ks2", "amount": 500, "reason": "requested_by_customer"}',
     '{"id": "re_3Qd1", "payment": "pay_8Ks2", "amount": 500, "status": "pending"}'),
    ("GET", "/refunds/{id}", "Retrieve one refund. Status is pending, succeeded or failed.",
     (), None,
     '{"id": "re_3Qd1", "status": "succeeded", "amount": 500}'),
    ("POST", "/customers", "Create a customer to save cards and group payments.",
     (("email", "string", "yes", "Must be unique among your customers."),
      ("name", "string", "no", "Full name."),
      ("payment_method", "string", "no", "A card token to save as the default card.")),
     '{"email": "ana@example.com", "name": "Ana Lima", "payment_method": "tok_visa"}',
     '{"id": "cus_71Hx", "email": "ana@example.com", "default_card": "card_5Tz0"}'),
    ("GET", "/customers/{id}", "Retrieve a customer with their saved cards.",
     (), None,
     '{"id": "cus_71Hx", "email": "ana@example.com", "cards": [{"id": "card_5Tz0", "last4": "4242"}]}'),
    ("DELETE", "/customers/{id}", "Delete a customer and their saved cards. Refused with 422 customer_in_use while the customer has a pending or requires_action payment.",
     (), None,
     '{"id": "cus_71Hx", "deleted": true}'),
    ("POST", "/webhooks", "Register a URL for events. The response includes the signing secret (whsec_...), shown only once.",
     (("url", "string", "yes", "An https URL."),
      ("events", "array of strings", "yes", "Event types, or [\"*\"] for all.")),
     '{"url": "https://shop.example/hooks/tallypay", "events": ["payment.succeeded", "refund.succeeded"]}',
     '{"id": "wh_2Ac8", "secret": "whsec_f00d", "events": ["payment.succeeded", "refund.succeeded"]}'),
    ("GET", "/balance", "Your available and pending balance per currency, in the smallest currency unit.",
     (), None,
     '{"available": [{"currency": "eur", "amount": 1289000}], "pending": [{"currency": "eur", "amount": 43000}]}'),
)

_PAYMENT_ERRORS = (
    ("400", "invalid_request", "A parameter is missing or malformed; the message names it."),
    ("401", "unauthorized", "The API key is missing, wrong or revoked."),
    ("402", "card_declined", "The bank declined the card; decline_code says why (insufficient_funds, expired_card, ...)."),
    ("404", "not_found", "No object with that id in this mode (live and test objects are separate)."),
    ("409", "idempotency_conflict", "The Idempotency-Key was used before with a different body."),
    ("422", "amount_too_large", "A capture or refund exceeds what is left of the payment."),
    ("422", "customer_in_use", "The customer has a payment in progress."),
    ("429", "rate_limited", "Too many requests; wait for the number of seconds in the Retry-After header."),
    ("500", "api_error", "Our side failed. Safe to retry with the same Idempotency-Key."),
)

_PAYMENT_WEBHOOKS = (
    ("payment.succeeded", "A payment was captured."),
    ("payment.failed", "A payment attempt failed; the payload includes the error code."),
    ("payment.requires_action", "The customer must complete 3-D Secure; send them to next_action.url."),
    ("refund.succeeded", "A refund reached the bank."),
    ("refund.failed", "A refund could not be delivered; the money returns to your balance."),
    ("customer.deleted", "A customer was deleted."),
)


def payments_api() -> Skill:
    parts = ["""# Tallypay REST API v2: reference

Tallypay takes card payments for online shops. This is the reference you use to answer developers' questions and to write example requests. Quote paths, parameters and error codes exactly.

## Basics

- Base URL: https://api.tallypay.example/v2. Every request uses HTTPS and JSON bodies.
- Authentication: send your secret key as a bearer token: `Authorization: Bearer sk_test_...`. Keys starting with sk_test_ use test mode, where no money moves; sk_live_ keys use live mode. Never put a secret key in a browser or mobile app.
- Amounts are integers in the smallest currency unit (cents for usd and eur, pence for gbp): 2500 means 25.00. Zero-decimal currencies such as jpy use whole units.
- Idempotency: send an `Idempotency-Key` header (any unique string, at most 255 characters) on every POST. Repeating a request with the same key and the same body returns the first result instead of charging twice. Keys are kept for 24 hours.
- Pagination: list endpoints return `data` and `has_more`. Pass `limit` (1 to 100, default 20) and `starting_after` (the last id you received) to page.
- Rate limits: 100 requests per second in live mode and 25 in test mode. Over the limit you get 429 with a Retry-After header.
- Versioning: this is v2. Fields may be added to responses at any time; existing fields are never removed within v2.

## Endpoints
"""]
    for method, path, what, params, body, response in _PAYMENT_ENDPOINTS:
        parts.append(f"\n### {method} {path}\n\n{what}\n")
        if params:
            parts.append("\n| Parameter | Type | Required | Notes |\n|---|---|---|---|\n")
            parts.extend(f"| {n} | {t} | {r} | {notes} |\n" for n, t, r, notes in params)
        url = "https://api.tallypay.example/v2" + path.replace("{id}", json.loads(response).get("id", ""))
        request = f"curl -X {method} {url} \\\n  -H \"Authorization: Bearer sk_test_4eC3\""
        if body:
            request += f" \\\n  -H \"Idempotency-Key: 7f1c9a\" \\\n  -d '{body}'"
        parts.append(f"\nExample:\n\n```bash\n{request}\n```\n\nResponse:\n\n```json\n{response}\n```\n")
    parts.append("\n## Errors\n\nErrors return a JSON body `{\"error\": {\"code\": ..., \"message\": ...}}` and these HTTP statuses:\n\n")
    parts.append("| Status | Code | Meaning |\n|---|---|---|\n")
    parts.extend(f"| {status} | {code} | {meaning} |\n" for status, code, meaning in _PAYMENT_ERRORS)
    parts.append("\n## Webhooks\n\nTallypay sends a POST to each registered URL when an event happens:\n\n")
    parts.extend(f"- `{event}`: {meaning}\n" for event, meaning in _PAYMENT_WEBHOOKS)
    parts.append(
        "\nEach delivery carries a `Tallypay-Signature` header: `t=<unix time>,v1=<hex>`, where v1 is the "
        "HMAC-SHA256 of `<t>.<raw body>` keyed with the webhook's signing secret. Reject deliveries whose "
        "signature does not match or whose t is more than 5 minutes old. Answer with any 2xx status within "
        "10 seconds; otherwise Tallypay retries with growing delays for up to 3 days. Deliveries can arrive "
        "twice or out of order, so handle each event id only once.\n"
    )
    return Skill(
        name="payments-api",
        version="2.3.0",
        description="Tool doc: the Tallypay REST API v2 reference, endpoints, errors and webhooks.",
        kind="tool-doc",
        opening="heading",
        text="".join(parts),
        qa=(
            ("How do I charge a card 25 euros? Show the request body.",
             "POST /v2/payments with {\"amount\": 2500, \"currency\": \"eur\", \"payment_method\": \"tok_visa\"}."),
            ("What unit is the amount field in?", "The smallest currency unit: 2500 means 25.00."),
            ("What is the largest page size when listing payments?", "100; the default is 20."),
            ("What does a 409 response mean?",
             "idempotency_conflict: the Idempotency-Key was reused with a different body."),
            ("Can I refund more than was captured?",
             "No. Refunds together may not exceed the captured amount (422 amount_too_large)."),
            ("How long do I have to capture an authorized payment?",
             "7 days; after that the authorization expires and the payment is canceled."),
            ("How do I check that a webhook really came from Tallypay?",
             "Verify the Tallypay-Signature header: HMAC-SHA256 of t.body with the signing secret, t "
             "at most 5 minutes old."),
            ("Why can't I delete this customer? I get 422 customer_in_use.",
             "The customer has a pending or requires_action payment; wait until it finishes."),
            ("A payment was captured by mistake. Can I cancel it?",
             "No, only uncaptured payments can be canceled; refund it with POST /refunds."),
            ("What's the rate limit in test mode?", "25 requests per second (100 in live mode)."),
        ),
        thread=(
            "I got a 402 when creating a payment. What does it mean?",
            "card_declined: the bank declined the card; decline_code says why.",
            "The decline_code is insufficient_funds. Should I retry the same request with the same "
            "Idempotency-Key?",
        ),
    )


def cli_reference() -> Skill:
    return Skill(
        name="cli-reference",
        version="0.9.0",
        description="Tool doc: the shipctl deployment CLI, its commands, the deploy freeze and exit codes.",
        kind="tool-doc",
        opening="code",
        text="""```console
$ shipctl --help
Usage: shipctl [GLOBAL FLAGS] <command> [ARGS]

Commands:
  deploy     Build and roll out a service to an environment
  rollback   Return a service to an earlier release
  status     Show the releases and health of a service
  logs       Fetch or stream a service's logs
  env        Read and change a service's environment variables
  secret     Store secrets for a service (values are never printed)

Global flags:
  -e, --env <name>   Target environment: dev, staging or prod (default: dev)
      --json         Machine-readable output
  -y, --yes          Do not ask for confirmation
```

shipctl is the only supported way to change what runs in our environments. Notes on each command:

- `shipctl deploy <service> [--ref <git ref>] [--canary <percent>]` builds the ref (default: the head of main) and rolls it out. With --canary, that share of traffic gets the new release for 15 minutes before the rest follows. A deploy to prod is refused unless the same ref passed a staging deploy in the last 24 hours.
- Deploy freeze: deploys to prod are blocked from Friday 15:00 UTC to Monday 07:00 UTC. Pass `--override-freeze <incident id>` to deploy a fix for an open incident. Rollbacks are always allowed.
- `shipctl rollback <service> [--to <release>]` returns to the previous release, or to the given one. The last 20 releases are kept.
- `shipctl status <service>` lists the releases, which one is live, and the health checks.
- `shipctl logs <service> [--since <duration>] [--follow] [--grep <text>]` prints logs. Without --follow, at most 10,000 lines are printed; durations look like 15m, 2h or 1d, and logs are kept for 14 days.
- `shipctl env set <service> KEY=VALUE` changes a variable and restarts the service. `shipctl env get <service> KEY` prints one.
- `shipctl secret set <service> KEY` reads the value from standard input. Use it for passwords, tokens and keys; never put them in env.

Exit codes: 0 success; 1 the command failed; 2 wrong usage; 3 blocked by policy (freeze, missing staging deploy); 4 health checks failed after the rollout, and shipctl rolled back automatically.
""",
        qa=(
            ("Write the command to deploy the billing service at tag v2.4.1 to production with a 10% canary.",
             "shipctl -e prod deploy billing --ref v2.4.1 --canary 10"),
            ("It's Friday at 16:30 UTC. Can I deploy to prod?",
             "Not normally: the freeze started at 15:00 UTC. Only with --override-freeze and an incident id; "
             "rollbacks are always allowed."),
            ("My deploy exited with code 4. What happened?",
             "The health checks failed after the rollout, and shipctl rolled back automatically."),
            ("How do I see the last 30 minutes of logs for the search service in staging?",
             "shipctl -e staging logs search --since 30m"),
            ("How do I store the database password for a service?",
             "With shipctl secret set <service> KEY, reading the value from standard input; never with env."),
            ("Which environment do commands use if I don't pass --env?", "dev."),
            ("Can I deploy a ref to prod that has never been deployed to staging?",
             "No. Prod needs a passing staging deploy of the same ref within 24 hours (exit code 3)."),
            ("How far back can I roll back?", "Up to the last 20 releases, with --to <release>."),
        ),
        thread=(
            "How do I roll back the checkout service in prod?",
            "shipctl -e prod rollback checkout",
            "It's Saturday, so we're in the freeze. Will that command be blocked?",
        ),
    )


# --------------------------------------------------------------------------------------------------
# Skills: few-shot examples


def sentiment_examples() -> Skill:
    shots = (
        ("Heats up in two minutes and the toast comes out even every time.", "positive | fast heating, even toasting"),
        ("Loud, leaks from the base, and support never replied.", "negative | leaks, noise, no reply from support"),
        ("The blender is powerful, but the jug is a pain to clean.", "mixed | powerful motor, hard-to-clean jug"),
        ("Delivered in a brown box. It is 30 cm tall and comes in grey.", "neutral | states facts only"),
        ("Great, yet another kettle that switches itself off halfway.", "negative | sarcastic; kettle stops halfway"),
        ("Exactly what I needed for a small kitchen, and it's quiet.", "positive | compact and quiet"),
        ("Nice design. Stopped working after a month.", "mixed | nice design, failed within a month"),
        ("Returned it. The handle got too hot to touch.", "negative | handle too hot"),
    )
    examples = "".join(f"\nReview: \"{review}\"\nLabel: {label}\n" for review, label in shots)
    return Skill(
        name="sentiment-examples",
        version="1.0.0",
        description="Few-shot examples: label kitchen-appliance reviews as positive, negative, mixed or neutral.",
        kind="examples",
        opening="prose",
        text=(
            "You label customer reviews of kitchen appliances for the product team. Each review gets exactly "
            "one label, positive, negative, mixed or neutral, followed by \" | \" and a reason of at most ten "
            "words. Mixed means the review clearly praises one thing and clearly criticises another. Neutral "
            "means it states facts without an opinion. Sarcasm counts as negative. Answer with the label line "
            "only, as in these examples:\n" + examples
        ),
        qa=(
            ("Review: \"Makes great coffee, but the carafe lid broke after a week.\"",
             "mixed | great coffee, lid broke in a week"),
            ("Review: \"Oh wonderful, another blender that can't crush ice.\"",
             "negative | sarcastic; cannot crush ice"),
            ("Review: \"Arrived on Tuesday. The box held the kettle and a manual.\"",
             "neutral | states delivery and contents only"),
            ("Review: \"Quiet, quick and easy to clean. Best purchase this year.\"",
             "positive | quiet, quick, easy to clean"),
            ("Which label does a review get when it praises one feature and criticises another?", "mixed"),
            ("Review: \"The timer died after one use and the refund took a month.\"",
             "negative | timer failed, slow refund"),
            ("Review: \"Perfect! Now my smoke alarm goes off every time I make toast.\"",
             "negative | sarcastic; toaster burns toast"),
        ),
        thread=(
            "Review: \"Does the job. Nothing special.\"",
            "neutral | no clear praise or criticism",
            "Hmm, what if it said \"Does the job, but it's ugly\"?",
        ),
    )


def sql_to_english() -> Skill:
    shots = (
        ("SELECT name FROM customers WHERE country = 'DE';", "Lists the names of all customers in Germany."),
        ("SELECT COUNT(*) FROM orders WHERE status = 'shipped';", "Counts the orders that have shipped."),
        ("SELECT o.id, o.total FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.email = 'ana@example.com';",
         "Shows the number and total of every order placed by ana@example.com."),
        ("SELECT category, AVG(price) FROM products GROUP BY category;", "Gives the average price of the products in each category."),
        ("UPDATE customers SET tier = 'gold' WHERE lifetime_value > 10000;",
         "Warning: this changes data: it moves every customer who has spent more than 10,000 to the gold tier."),
        ("SELECT * FROM tickets WHERE opened_at < NOW() - INTERVAL '7 days' AND closed_at IS NULL;",
         "Lists the support tickets that have been open for more than a week."),
    )
    examples = "".join(f"```sql\n{sql}\n```\nExplanation: {text}\n\n" for sql, text in shots)
    return Skill(
        name="sql-to-english",
        version="1.0.1",
        description="Few-shot examples: explain a SQL query in one plain-English sentence for managers.",
        kind="examples",
        opening="code",
        text=examples + (
            "Explain each SQL query the user sends in one plain-English sentence for a non-technical "
            "manager, like the examples above. Say what the result is; do not mention tables, joins, "
            "aliases or SQL keywords. If the query changes data (INSERT, UPDATE, DELETE or DROP), start "
            "the sentence with \"Warning: this changes data:\". If it is not valid SQL, say so in one "
            "sentence instead.\n"
        ),
        qa=(
            ("SELECT COUNT(*) FROM orders WHERE created_at >= '2024-01-01';", "Counts the orders placed since 1 January 2024."),
            ("DELETE FROM sessions WHERE last_seen < NOW() - INTERVAL '30 days';",
             "Warning: this changes data: it removes the sessions not used in the last 30 days."),
            ("SELECT product_id, SUM(quantity) FROM order_items GROUP BY product_id ORDER BY 2 DESC LIMIT 5;",
             "Shows the five best-selling products and how many of each were sold."),
            ("SELECT c.name FROM customers c LEFT JOIN orders o ON o.customer_id = c.id WHERE o.id IS NULL;",
             "Lists the customers who have never placed an order."),
            ("UPDATE products SET price = price * 1.1 WHERE category = 'tools';",
             "Warning: this changes data: it raises the price of every tool by 10%."),
            ("SELECT AVG(total) FROM orders WHERE status = 'paid';", "Gives the average value of a paid order."),
            ("SELEKT name FORM users;", "This is not valid SQL, so it cannot be explained."),
        ),
        thread=(
            "SELECT MAX(total) FROM orders;",
            "Gives the value of the largest order ever placed.",
            "And this one? SELECT MAX(total) FROM orders WHERE created_at >= '2024-06-01';",
        ),
    )


def email_triage_examples() -> Skill:
    shots = (
        ("I was charged twice for my March invoice.", "billing", "high"),
        ("Can you send me a quote for 40 seats on the Team plan?", "sales", "normal"),
        ("Nobody in our company can log in since this morning, we get a blank page.", "technical", "urgent"),
        ("Please change the email address on our account to finance@brightmill.example.", "account", "normal"),
        ("I forgot my password and the reset email never arrives.", "account", "high"),
        ("Congratulations! You have won a free cruise, click here to claim.", "spam", "low"),
        ("The CSV export cuts off after 1,000 rows.", "technical", "normal"),
        ("I can see another customer's invoices in my dashboard.", "technical", "urgent"),
    )
    lines = "".join(
        json.dumps({"email": e, "queue": q, "priority": p}, ensure_ascii=False) + "\n" for e, q, p in shots
    )
    return Skill(
        name="email-triage-examples",
        version="1.0.0",
        description="Few-shot examples: route support emails to a queue with a priority, as JSON lines.",
        kind="examples",
        opening="code",
        text="```jsonl\n" + lines + "```\n\n" + (
            "These are routed support emails. Route each new email the same way: choose one queue "
            "(billing, technical, sales, account or spam) and one priority. Priorities: urgent when the "
            "service is down for the customer or their data may be exposed to others; high when money "
            "was taken wrongly or someone cannot get into their account; low for spam; normal for "
            "everything else. Reply with one JSON object on one line, in the form of the examples, with "
            "\"email\" shortened to its first ten words.\n"
        ),
        qa=(
            ("Email: \"Our whole team gets a 500 error on every page since 9am.\"",
             "{\"email\": \"Our whole team gets a 500 error on every page\", \"queue\": \"technical\", \"priority\": \"urgent\"}"),
            ("Email: \"Do you offer a discount for registered charities?\"",
             "{\"email\": \"Do you offer a discount for registered charities?\", \"queue\": \"sales\", \"priority\": \"normal\"}"),
            ("Email: \"You renewed my plan after I cancelled it in May.\"",
             "{\"email\": \"You renewed my plan after I cancelled it in May.\", \"queue\": \"billing\", \"priority\": \"high\"}"),
            ("Email: \"Cheap watches, 90% off, limited offer!!!\"",
             "{\"email\": \"Cheap watches, 90% off, limited offer!!!\", \"queue\": \"spam\", \"priority\": \"low\"}"),
            ("Email: \"My two-factor codes stopped working after I changed phones.\"",
             "{\"email\": \"My two-factor codes stopped working after I changed phones.\", \"queue\": \"account\", \"priority\": \"high\"}"),
            ("Which priority does an email get when a customer sees someone else's data?", "urgent"),
            ("Email: \"How do I add a second admin to our workspace?\"",
             "{\"email\": \"How do I add a second admin to our workspace?\", \"queue\": \"account\", \"priority\": \"normal\"}"),
        ),
        thread=(
            "Email: \"The mobile app crashes when I open settings.\"",
            "{\"email\": \"The mobile app crashes when I open settings.\", \"queue\": \"technical\", \"priority\": \"normal\"}",
            "The same customer writes again: \"Now the website is down for all 200 of our staff.\" Route it.",
        ),
    )


# --------------------------------------------------------------------------------------------------
# Skills: data tables


def shipping_rates() -> Skill:
    return Skill(
        name="shipping-rates",
        version="2024.2.0",
        description="Data table: parcel rates by weight and zone, with zones, surcharges and delivery times.",
        kind="data-table",
        opening="table",
        text="""| Weight (up to) | Zone A | Zone B | Zone C | Zone D |
|---|---|---|---|---|
| 0.5 kg | $4.20 | $5.10 | $7.80 | $12.40 |
| 1 kg | $5.60 | $6.90 | $10.50 | $16.90 |
| 2 kg | $7.40 | $9.20 | $14.30 | $23.50 |
| 5 kg | $11.80 | $14.60 | $22.90 | $38.00 |
| 10 kg | $18.50 | $23.10 | $36.40 | $61.20 |
| 20 kg | $29.90 | $37.50 | $58.80 | $99.00 |

These are the parcel rates of Quayside Couriers, per parcel, before extras. Use them to quote prices and delivery times.

- Zones: A is within the same city; B is within the same state; C is the rest of the mainland; D is islands and remote areas, which are the postcodes starting with 08 or 09.
- Charge the billable weight: the larger of the actual weight and the volumetric weight (length x width x height in cm, divided by 5,000). Use the first band that is at least the billable weight.
- Parcels over 20 kg or longer than 120 cm on any side are freight. We do not quote freight; refer the customer to the freight desk.
- Fuel surcharge: {{fuel_surcharge_pct}}% of the rate, rounded to the cent.
- Extras: signature on delivery $2.50; Saturday delivery $6.00 (Zones A and B only).
- Delivery times in working days: Zone A next day, B 1 to 2, C 2 to 4, D 4 to 7.
""",
        fields=(
            Field("fuel_surcharge_pct", "8", "Fuel surcharge as a percentage of the parcel rate.",
                  "The fuel surcharge percentage"),
        ),
        qa=(
            ("What is the rate for a 3 kg parcel to Zone C, before extras?", "$22.90 (the 5 kg band)."),
            ("A 1.5 kg parcel goes to Zone B with signature on delivery. What's the total with fuel surcharge?",
             "$12.44: $9.20 plus 8% fuel ($0.74) plus $2.50 for the signature."),
            ("A box measures 50 x 40 x 30 cm and weighs 4 kg. What is its billable weight?",
             "12 kg: the volumetric weight (60,000 / 5,000) is more than 4 kg."),
            ("Can I get Saturday delivery to Zone D?", "No, only in Zones A and B."),
            ("How long does delivery to Zone C take?", "2 to 4 working days."),
            ("Can you quote a 25 kg parcel?", "No, over 20 kg is freight; contact the freight desk."),
            ("Which zone is postcode 0871?", "Zone D, as it starts with 08."),
            ("How much is the fuel surcharge?", "8% of the rate, rounded to the cent."),
        ),
        thread=(
            "How much is a 0.8 kg parcel to Zone A, before extras?",
            "$5.60 (the 1 kg band).",
            "And the same parcel to an island address?",
        ),
    )


def timezone_table() -> Skill:
    return Skill(
        name="timezone-table",
        version="1.0.0",
        description="Data table: Larkspur offices with time zones, UTC offsets, office hours and on-call contacts.",
        kind="data-table",
        opening="prose",
        text="""Larkspur Systems works from eight offices. Use this table when someone asks about a colleague's local time, an office's hours, or whom to call out of hours. Offsets are for standard time; offices marked * move their clocks one hour forward in their local summer.

| Office | Time zone | UTC offset | Office hours (local) | On-call contact |
|---|---|---|---|---|
| Denver* | America/Denver | UTC-7 | 08:00-17:00 | Maya Ortiz |
| Toronto* | America/Toronto | UTC-5 | 08:30-17:30 | Kofi Mensah |
| Sao Paulo | America/Sao_Paulo | UTC-3 | 09:00-18:00 | Lucas Ferreira |
| Dublin* | Europe/Dublin | UTC+0 | 09:00-17:30 | Aoife Byrne |
| Berlin* | Europe/Berlin | UTC+1 | 09:00-18:00 | Jonas Weber |
| Nairobi | Africa/Nairobi | UTC+3 | 08:00-17:00 | Wanjiru Kamau |
| Singapore | Asia/Singapore | UTC+8 | 09:00-18:00 | Tan Wei Ling |
| Sydney* | Australia/Sydney | UTC+10 | 08:30-17:00 | Priya Nair |

On-call contacts cover only the time outside office hours; during office hours, call the office's front desk. On Fridays the Nairobi office closes at 15:00. Meetings across offices go between 13:00 and 16:00 UTC when possible.
""",
        qa=(
            ("Who is the on-call contact for the Singapore office?", "Tan Wei Ling."),
            ("It is 12:00 UTC in January. What time is it in Denver?", "05:00 (UTC-7)."),
            ("What is Nairobi's UTC offset?", "UTC+3."),
            ("Which offices change their clocks in summer?", "Denver, Toronto, Dublin, Berlin and Sydney."),
            ("When does the Nairobi office close on Fridays?", "At 15:00 local time."),
            ("It's 11:00 on a Tuesday in Berlin and something is broken there. Whom do I call?",
             "The Berlin front desk: on-call only covers outside office hours."),
            ("What are the office hours in Toronto?", "08:30 to 17:30 local time."),
            ("Which office is furthest ahead of UTC?", "Sydney, at UTC+10."),
        ),
        thread=(
            "What time does the Dublin office open?",
            "09:00 local time.",
            "In winter, what time is that in Singapore?",
        ),
    )


_CATALOG_CATEGORIES = (
    # SKU prefix, category, first words, second words, price range in dollars, weight range in grams
    ("TN", "tent", ("Tarn", "Ridge", "Cirque", "Meadow", "Summit"), ("1P Tent", "2P Tent", "3P Tent", "Bivy"), (149, 649), (900, 3200)),
    ("PK", "pack", ("Scree", "Alder", "Col", "Kestrel", "Tor"), ("20 Pack", "30 Pack", "45 Pack", "65 Pack"), (59, 279), (500, 2100)),
    ("JK", "jacket", ("Ridgeline", "Squall", "Larch", "Fell", "Drift"), ("Jacket", "Shell", "Insulated Jacket", "Vest"), (69, 349), (180, 700)),
    ("BT", "footwear", ("Talus", "Bracken", "Moraine", "Heath"), ("Hiking Boot", "Trail Shoe", "Winter Boot", "Approach Shoe"), (89, 259), (600, 1600)),
    ("ST", "cooking", ("Ember", "Hearth", "Flint"), ("Canister Stove", "Liquid Fuel Stove", "Pot Set", "Windscreen"), (19, 189), (90, 900)),
    ("SB", "sleeping", ("Cinder", "Dune", "Glacier", "Willow"), ("-5 C Bag", "0 C Bag", "+5 C Bag", "Liner"), (39, 429), (250, 1900)),
    ("LT", "lighting", ("Lumen", "Spark", "Beacon"), ("Headlamp", "Lantern", "Flashlight", "Bike Light"), (15, 119), (40, 400)),
    ("WT", "water", ("Spring", "Brook", "Rill"), ("Filter", "Bottle 1 L", "Bladder 2 L", "Purifier"), (12, 99), (60, 350)),
)
_WAREHOUSES = {"RNO": "Reno, Nevada", "COL": "Columbus, Ohio", "ALN": "Allentown, Pennsylvania"}


def product_catalog() -> Skill:
    rng = random.Random(f"{SEED}:product-catalog")
    rows: list[dict[str, str | int]] = []
    skus: set[str] = set()
    for prefix, category, firsts, seconds, (lo, hi), (wlo, whi) in _CATALOG_CATEGORIES:
        names = [f"{a} {b}" for a in firsts for b in seconds]
        for name in sorted(rng.sample(names, min(len(names), 14))):
            sku = f"{prefix}-{rng.randint(1000, 9999)}"
            while sku in skus:
                sku = f"{prefix}-{rng.randint(1000, 9999)}"
            skus.add(sku)
            roll = rng.random()
            stock = 0 if roll < 0.1 else rng.randint(1, 4) if roll < 0.25 else rng.randint(5, 80)
            rows.append({"sku": sku, "name": name, "category": category,
                         "price": f"{rng.randint(lo, hi)}.{rng.choice(('00', '50', '95'))}",
                         "stock": stock, "warehouse": rng.choice(sorted(_WAREHOUSES)),
                         "weight": rng.randint(wlo, whi) // 10 * 10})
    csv = "sku,name,category,price_usd,stock,warehouse,weight_g\n" + "".join(
        f"{r['sku']},{r['name']},{r['category']},{r['price']},{r['stock']},{r['warehouse']},{r['weight']}\n" for r in rows
    )
    text = "```csv\n" + csv + "```\n\n" + (
        "This is the stock list of the Fernhill Outdoor web shop, exported at 06:00 today. Answer "
        "questions about products, prices and availability from it. Rules:\n\n"
        "- Quote prices in US dollars exactly as listed. Members get 10% off items that cost more than $100.\n"
        "- Stock 0 means out of stock: offer a back-order, which ships in 2 to 3 weeks.\n"
        "- Stock from 1 to 4: say \"only N left\" and do not promise more than N.\n"
        "- Orders placed before {{order_cutoff}} Pacific time ship the same working day from the warehouse "
        "listed; later orders ship the next working day. Warehouses: "
        + "; ".join(f"{code} is {place}" for code, place in sorted(_WAREHOUSES.items())) + ".\n"
        "- An order with items from two warehouses ships as two parcels.\n"
        "- If a product is not on the list, say that we do not sell it; do not suggest other shops.\n"
    )

    def pick(cond) -> dict:  # a deterministic row that satisfies cond
        return rng.choice([r for r in rows if cond(r)])

    out, low, big = pick(lambda r: r["stock"] == 0), pick(lambda r: 1 <= r["stock"] <= 4), pick(lambda r: float(r["price"]) > 100)
    a, b = rng.sample([r for r in rows if r["category"] == "jacket"], 2)
    cheaper = a if float(a["price"]) < float(b["price"]) else b
    tents = [r for r in rows if r["category"] == "tent"]
    cheapest_tent = min(tents, key=lambda r: float(r["price"]))
    plain, heavy, coded, threaded = rng.sample([r for r in rows if r["stock"] >= 5], 4)
    return Skill(
        name="product-catalog",
        version="2024.6.0",
        description="Data table: the web shop's stock list as CSV (SKU, price, stock, warehouse), with rules.",
        kind="data-table",
        opening="code",
        text=text,
        fields=(
            Field("order_cutoff", "14:00", "Pacific time before which orders ship the same working day.",
                  "The same-day shipping cut-off"),
        ),
        qa=(
            (f"How much is the {plain['name']}?", f"${plain['price']}."),
            (f"Is the {out['name']} in stock?",
             "No, it is out of stock. You can back-order it; it ships in 2 to 3 weeks."),
            (f"I'd like 6 of the {low['name']}. Can you send them all?", f"No, only {low['stock']} left."),
            (f"Which product is SKU {coded['sku']}, and where does it ship from?",
             f"The {coded['name']}, from {coded['warehouse']} ({_WAREHOUSES[str(coded['warehouse'])]})."),
            (f"How heavy is the {heavy['name']}?", f"{heavy['weight']} g."),
            (f"Which is cheaper, the {a['name']} or the {b['name']}?",
             f"The {cheaper['name']}, at ${cheaper['price']}."),
            ("What is the cheapest tent you sell?", f"The {cheapest_tent['name']}, at ${cheapest_tent['price']}."),
            (f"I'm a member. What do I pay for the {big['name']}?",
             f"${(Decimal(str(big['price'])) * Decimal('0.9')).quantize(Decimal('0.01'), ROUND_HALF_UP)}: "
             f"10% off ${big['price']}."),
            ("Do you sell kayaks?", "No, kayaks are not on our list."),
        ),
        thread=(
            f"What's the SKU of the {threaded['name']}?",
            f"{threaded['sku']}.",
            "Is it in stock, and if I order it at 15:00 Pacific time today, when does it ship?",
        ),
    )


# --------------------------------------------------------------------------------------------------
# Skills: checklists


def onboarding_checklist() -> Skill:
    return Skill(
        name="onboarding-checklist",
        version="1.3.0",
        description="Checklist: who does what when a new employee joins, from before day 1 to day 90.",
        kind="checklist",
        opening="list",
        text="""- [ ] Before day 1 (IT): order the laptop, create the email account, and add the new hire to the #welcome channel.
- [ ] Before day 1 (manager): choose an onboarding buddy from the team and send the first-week plan.
- [ ] Day 1 (new hire): collect the laptop and badge from the front desk at 09:00.
- [ ] Day 1 (new hire): turn on multi-factor authentication and set up the password manager.
- [ ] Day 1 (new hire): read and sign the code of conduct in Beacon.
- [ ] Day 1 (buddy): lunch with the new hire, on the team's budget.
- [ ] Week 1 (new hire): finish the security awareness training within 5 working days.
- [ ] Week 1 (manager): agree three goals for the first 90 days and write them in Beacon.
- [ ] Week 1 (new hire): meet everyone on the team for 20 minutes each.
- [ ] Day 30 (new hire): enrol in benefits; after day 30 enrolment waits until the next open period in November.
- [ ] Day 30 (manager): first check-in on the 90-day goals.
- [ ] Day 60 (engineers): shadow one full week of the on-call rotation before joining it.
- [ ] Day 90 (manager and new hire): end-of-probation review; the manager confirms the outcome to People Operations within 5 working days.

Tick each item in Beacon when it is done. Anything not ticked by its date shows up as overdue on the manager's dashboard. Questions go to the onboarding buddy first, then to People Operations.
""",
        qa=(
            ("Who orders the new hire's laptop?", "IT, before day 1."),
            ("By when must a new hire finish the security awareness training?", "Within 5 working days, in week 1."),
            ("I joined 40 days ago and never enrolled in benefits. What now?",
             "Enrolment after day 30 waits until the next open period in November."),
            ("Who picks the onboarding buddy?", "The manager, before day 1."),
            ("When can a new engineer join the on-call rotation?",
             "After shadowing one full on-call week, from day 60."),
            ("Where does the new hire collect the laptop on day 1, and when?", "From the front desk at 09:00."),
            ("How long does the manager have to confirm the probation outcome?",
             "5 working days after the day 90 review."),
        ),
        thread=(
            "What does a new hire need to do on day 1?",
            "Collect the laptop and badge at 09:00, turn on multi-factor authentication, set up the password "
            "manager, sign the code of conduct, and have lunch with the buddy.",
            "And what is left for the rest of the first week?",
        ),
    )


def security_checklist() -> Skill:
    return Skill(
        name="security-checklist",
        version="2.2.0",
        description="Checklist: security questions every production change answers, and when a review is needed.",
        kind="checklist",
        opening="heading",
        text="""# Pre-release security checklist

Every change that ships to production answers these questions in its pull request. If any answer in section A is yes, the change needs a review by the {{review_team}} team before it merges.

## A. Does the change...

1. expose a new endpoint, port or page to the internet?
2. handle payment data, health data or other personal data in a new way?
3. change authentication, sessions or permission checks?
4. add or upgrade a third-party dependency?
5. create a new data store, bucket or queue?

## B. Code

- Database queries use parameters, never string concatenation.
- Output that reaches HTML is encoded by the template engine; no raw HTML from users.
- Secrets come from the vault at runtime. Never put them in code, config files or environment variables baked into images.
- Every input has a size limit, and uploads are checked for type.
- Logs contain no personal data, tokens or passwords.

## C. Deployment

- Dependencies are pinned with hashes.
- Containers run as a non-root user with a read-only file system.
- Only TLS 1.2 or newer is accepted.
- Risky changes ship behind a feature flag, with a written rollback plan.

The {{review_team}} team answers review requests within 2 working days. Fixes for an open incident are reviewed within 4 hours when requested in the #sec-urgent channel.
""",
        fields=(
            Field("review_team", "AppSec", "The team that reviews changes flagged by section A.", "The review team"),
        ),
        qa=(
            ("My change only tweaks CSS colours. Does it need a security review?",
             "No: none of the section A questions is a yes."),
            ("I'm upgrading a logging library. Do I need a review?",
             "Yes, upgrading a third-party dependency is question A4, so AppSec must review it."),
            ("Can I bake the API key into the Docker image as an environment variable?",
             "No. Secrets come from the vault at runtime, never from images."),
            ("How quickly does the review team respond?",
             "Within 2 working days; incident fixes within 4 hours via #sec-urgent."),
            ("Which TLS versions may a service accept?", "TLS 1.2 or newer."),
            ("May I log the email address when a login fails?", "No, logs must not contain personal data."),
            ("Who reviews changes that hit a section A question?", "The AppSec team."),
            ("What does a risky change need before it ships?", "A feature flag and a written rollback plan."),
        ),
        thread=(
            "I'm adding a new S3 bucket for report exports. Which checklist items apply?",
            "A5 (a new data store), so AppSec must review; and the B and C items as always.",
            "The review is blocking a fix for tonight's outage. Can it go faster?",
        ),
    )


# --------------------------------------------------------------------------------------------------
# Short skills (about 80-220 tokens each): their own family of cases (see SHORT_SKILLS)


def returns_policy() -> Skill:
    return Skill(
        name="returns-policy",
        version="1.0.0",
        description="Policy in one paragraph: what Fernhill Outdoor takes back, and what a return costs.",
        kind="policy",
        opening="prose",
        text=(
            "Customers of Fernhill Outdoor may return unused items within 30 days of delivery for a full refund "
            "to the original payment method. Items worn outdoors, personalised items and anything sold as final "
            "sale cannot be returned. Refunds are issued within 5 working days after the warehouse receives the "
            "parcel. Return shipping is free for members of the Fernhill Club; everyone else pays a flat 6.50 EUR, "
            "deducted from the refund. Exchanges for another size are free for everyone and do not restart the "
            "30-day clock. Gift cards are never refunded in cash.\n"
        ),
        qa=(
            ("I bought boots 40 days ago and never wore them. Can I return them?",
             "No: returns are accepted within 30 days of delivery."),
            ("How much does a return cost if I'm not a Club member?", "A flat 6.50 EUR, deducted from the refund."),
            ("When will I get my money back after sending a return?",
             "Within 5 working days after the warehouse receives the parcel."),
            ("Can I return a water bottle with my name engraved on it?", "No, personalised items cannot be returned."),
            ("Can I swap a jacket for a bigger size, and what does that cost?", "Yes, size exchanges are free."),
            ("Can I get cash back for a gift card?", "No, gift cards are never refunded in cash."),
        ),
        thread=(),
    )


def room_booking() -> Skill:
    return Skill(
        name="room-booking",
        version="1.0.0",
        description="Policy as a list: booking meeting rooms at the office.",
        kind="policy",
        opening="list",
        text=(
            "- Meeting rooms on floors 2 and 3 are booked in the Rooms app; the boardroom on floor 4 only "
            "through the office manager, Hanna Lind.\n"
            "- A booking lasts at most 2 hours and starts at most 14 days ahead.\n"
            "- If nobody checks in on the room's tablet within 10 minutes of the start, the booking is released.\n"
            "- Weekly bookings need a team lead's approval and expire after 8 weeks.\n"
            "- External visitors must be registered at reception the day before.\n"
            "- Wipe the whiteboard and take your cups when you leave.\n"
        ),
        qa=(
            ("How do I book the boardroom?", "Through the office manager, Hanna Lind."),
            ("I'm 15 minutes late and didn't check in. Is the room still mine?",
             "No, the booking was released after 10 minutes without a check-in."),
            ("Can I book a room for a 3-hour workshop in one go?", "No, a booking lasts at most 2 hours."),
            ("How far ahead can I book a room?", "Up to 14 days ahead."),
            ("Do weekly bookings run forever?", "No: they need a team lead's approval and expire after 8 weeks."),
            ("A client visits us tomorrow. What do I need to do today?", "Register them at reception."),
        ),
        thread=(),
    )


def shortlink_api() -> Skill:
    return Skill(
        name="shortlink-api",
        version="1.0.0",
        description="Tool doc: the short-link service's two calls, limits and errors.",
        kind="tool-doc",
        opening="code",
        text=(
            "```\nPOST /v1/links\n{\"url\": \"https://example.com/page\", \"expires_in_days\": 30}\n```\n"
            "Creates a short link on lnk.fernhill.io and returns `{\"code\": \"a8Xk2\", \"short_url\": "
            "\"https://lnk.fernhill.io/a8Xk2\"}`. `expires_in_days` is optional (default 90, at most 365). "
            "Authenticate with the header `Authorization: Bearer <token>`. A token may send 60 requests a "
            "minute; over that the API answers 429 with a `Retry-After` header. `DELETE /v1/links/{code}` "
            "removes a link and returns 204; an unknown code returns 404.\n"
        ),
        qa=(
            ("How long does a short link live if I don't say?", "90 days."),
            ("How do I remove the link with code a8Xk2?", "DELETE /v1/links/a8Xk2, which returns 204."),
            ("My script got a 429. What happened?",
             "It sent more than 60 requests a minute; wait for the Retry-After header."),
            ("Can a short link last two years?", "No, at most 365 days."),
            ("Which header authenticates a request?", "Authorization: Bearer <token>."),
        ),
        thread=(),
    )


def release_notes_style() -> Skill:
    return Skill(
        name="release-notes-style",
        version="1.0.0",
        description="Style guide: how customer-facing release notes are written.",
        kind="style-guide",
        opening="heading",
        text=(
            "# Release notes\n\n"
            "Write release notes for customers, not engineers. Start every entry with a verb in the past "
            "tense (\"Added\", \"Fixed\", \"Removed\") and keep it to one sentence. Group entries under New, "
            "Improved and Fixed, in that order, and leave out empty groups. Name features as the app shows "
            "them, never by ticket number or code name. Breaking changes come first, in bold, with what the "
            "customer must do. Write dates as 3 March 2026.\n"
        ),
        qa=(
            ("How should the date of a release be written?", "Like 3 March 2026."),
            ("Is 'Fixed PAY-812' a good entry?", "No, name the feature as the app shows it, not the ticket."),
            ("In what order do the groups go?", "New, Improved, Fixed; empty groups are left out."),
            ("Turn 'we made CSV exports quicker' into an entry.", "Under Improved: \"Made CSV exports faster.\""),
            ("Where does a breaking change go?", "First, in bold, saying what the customer must do."),
        ),
        thread=(),
    )


def polite_rewrites() -> Skill:
    return Skill(
        name="polite-rewrites",
        version="1.0.0",
        description="Examples: blunt messages rewritten politely, keeping every fact.",
        kind="examples",
        opening="prose",
        text=(
            "Rewrite blunt messages into polite ones that keep every fact and add none. Examples:\n\n"
            "Blunt: Invoice 1042 is late. Pay now.\n"
            "Polite: A quick reminder that invoice 1042 is past due; could you arrange payment this week?\n\n"
            "Blunt: No, we can't do that.\n"
            "Polite: I'm sorry, that isn't something we can offer.\n\n"
            "Blunt: Send the file.\n"
            "Polite: Could you send me the file when you have a moment?\n"
        ),
        qa=(
            ("Rewrite: You forgot the attachment.", "I think the attachment didn't come through; could you resend it?"),
            ("Rewrite: The meeting moved to 3pm. Be there.",
             "Just a heads-up that the meeting has moved to 3 pm; I hope you can make it."),
            ("Rewrite: We're closed on Monday.", "Please note that we are closed on Monday."),
            ("Rewrite: Stop emailing support twice.",
             "To help us answer faster, could you send each request to support just once?"),
            ("Rewrite: Your password is wrong.", "It looks like that password didn't match; could you try again?"),
        ),
        thread=(),
    )


def ferry_timetable() -> Skill:
    return Skill(
        name="ferry-timetable",
        version="1.0.0",
        description="Data table: ferry routes, first and last departures, frequency and crossing time.",
        kind="data-table",
        opening="table",
        text=(
            "| Route | First departure | Last departure | Every | Crossing |\n"
            "|---|---|---|---|---|\n"
            "| Harbor - Isle Maren | 06:10 | 22:40 | 30 min | 25 min |\n"
            "| Harbor - Kestrel Point | 07:00 | 20:00 | 60 min | 40 min |\n"
            "| Isle Maren - Kestrel Point | 08:15 | 18:15 | 120 min | 35 min |\n\n"
            "On Sundays every first departure is one hour later. Bicycles travel free; cars go only on the "
            "Harbor - Kestrel Point route.\n"
        ),
        qa=(
            ("When is the last ferry from Harbor to Isle Maren?", "22:40."),
            ("How long is the crossing from Harbor to Kestrel Point?", "40 minutes."),
            ("Can I take my car to Isle Maren?", "No, cars go only on Harbor - Kestrel Point."),
            ("When is the first Sunday ferry from Harbor to Isle Maren?", "07:10."),
            ("How often does the Isle Maren - Kestrel Point ferry run?", "Every 120 minutes."),
        ),
        thread=(),
    )


def oncall_handover() -> Skill:
    return Skill(
        name="oncall-handover",
        version="1.0.0",
        description="Checklist: what the on-call engineer does before handing over the pager.",
        kind="checklist",
        opening="heading",
        text=(
            "# On-call handover\n\n"
            "Before your shift ends at 09:00:\n"
            "1. Write every open incident into the handover doc with its status and next step.\n"
            "2. Silence no alert for longer than 4 hours, and list every silence you set.\n"
            "3. Hand over the pager in #oncall and wait until the next engineer replies \"ack\".\n"
            "4. If nobody acks within 15 minutes, call the secondary on-call.\n"
            "5. Log your hours in the rota sheet by Friday.\n"
        ),
        qa=(
            ("When does an on-call shift end?", "At 09:00."),
            ("The next engineer hasn't acked after 20 minutes. What now?", "Call the secondary on-call."),
            ("How long may I silence a noisy alert?", "At most 4 hours, and list the silence in the handover."),
            ("Where do I hand over the pager?", "In #oncall."),
            ("By when must I log my on-call hours?", "By Friday, in the rota sheet."),
        ),
        thread=(),
    )


def unit_conversions() -> Skill:
    return Skill(
        name="unit-conversions",
        version="1.0.0",
        description="Examples: quantities converted to metric in one fixed answer format.",
        kind="examples",
        opening="list",
        text=(
            "- 5 miles -> 8.0 km\n"
            "- 12 ounces -> 340 g\n"
            "- 70 degrees Fahrenheit -> 21.1 C\n"
            "- 3 gallons (US) -> 11.4 L\n\n"
            "Convert every quantity the user gives to metric in exactly this format: the quantity as given, "
            "an arrow, then the metric value rounded to one decimal (whole grams and millilitres) with its "
            "unit symbol. Several quantities go on separate lines. Add no other words.\n"
        ),
        qa=(
            ("10 miles", "10 miles -> 16.1 km"),
            ("How much is 2 pounds in metric?", "2 pounds -> 907 g"),
            ("Convert 100 degrees Fahrenheit.", "100 degrees Fahrenheit -> 37.8 C"),
            ("8 fluid ounces and 6 feet", "8 fluid ounces -> 237 mL\n6 feet -> 1.8 m"),
            ("What is half a gallon (US)?", "0.5 gallons (US) -> 1.9 L"),
        ),
        thread=(),
    )


SHORT_SKILLS = (
    returns_policy, room_booking, shortlink_api, release_notes_style, polite_rewrites, ferry_timetable,
    oncall_handover, unit_conversions,
)


SKILLS = (
    haiku_style, commit_messages, brand_voice, leave_policy, clinic_triage, library_loans, grading_rubric,
    employee_handbook, weather_api, payments_api, cli_reference, sentiment_examples, sql_to_english,
    email_triage_examples, shipping_rates, timezone_table, product_catalog, onboarding_checklist,
    security_checklist,
)


# --------------------------------------------------------------------------------------------------
# Token estimates, without a tokenizer


def approx_tokens(text: str) -> int:
    """A tokenizer-free token count: digits and punctuation one each, 1.15 per word.

    On this corpus it lands within about 10% of SmolLM2's tokenizer (which splits digits one by one,
    hence CSV and price tables cost more than their length in characters suggests); good enough to keep
    compositions under budget and to report what each split costs, and the script stays stdlib-only.
    """
    digits = sum(c.isdigit() for c in text)
    punctuation = sum(not (c.isalnum() or c.isspace()) for c in text)
    words = len(re.findall(r"[^\W\d_]+", text))
    return round(digits + punctuation + 1.15 * words)


# A composition's estimated tokens (skills and system text) stay under this, so the longest composed
# prompt stays under about 6,000 real tokens.
COMPOSE_MAX_TOKENS = 5000
MAX_SYSTEM_TOKENS = max(approx_tokens(t) for texts in SYSTEMS.values() for t in texts)
# Room kept for up to three earlier exchanges in a multi-turn case.
HISTORY_TOKENS = 400
# Per-message overhead of the chat template in the estimate (role markers and separators).
TEMPLATE_TOKENS = 6


def case_tokens(case: Case, skills: dict[str, Skill]) -> int:
    """Estimated prompt tokens of a case, chat template included."""
    texts = [case.system, *(skills[s].text for s in case.skills), case.user, *(t["content"] for t in case.history)]
    messages = 2 + len(case.history)
    return sum(approx_tokens(t) for t in texts if t) + TEMPLATE_TOKENS * messages


# --------------------------------------------------------------------------------------------------
# Cases


class _Deck(Generic[T]):
    """Draws items of a pool in a seeded order, reshuffling when the pool is used up.

    Cycling rather than sampling with replacement keeps every question (and every system text) in use
    and spreads them evenly over the cases.
    """

    def __init__(self, items: list[T], rng: random.Random):
        self.items, self.rng = list(items), rng
        self.order: list[T] = []

    def draw(self, avoid: tuple[T, ...] = ()) -> T:
        if not self.order:
            self.order = self.rng.sample(self.items, len(self.items))
        for i, item in enumerate(self.order):
            if item not in avoid:
                return self.order.pop(i)
        return self.rng.choice([x for x in self.items if x not in avoid])


class _Builder:
    """Assembles the cases of every kind from the skills' questions and the system texts.

    A family of cases (the main one; the short skills') has its own skills, held-out skills, seeded
    generator and a prefix on its case ids and kinds, so adding a family leaves the others as they were."""

    def __init__(self, skills: dict[str, Skill], family: str = "cases", test_only: tuple[str, ...] = TEST_ONLY,
                 prefix: str = ""):
        self.skills, self.test_only, self.prefix = skills, test_only, prefix
        self.rng = random.Random(f"{SEED}:{family}")
        self.questions = {name: _Deck(list(s.qa), self.rng) for name, s in skills.items()}
        self.systems = {cls: _Deck(list(texts), self.rng) for cls, texts in SYSTEMS.items()}
        self.used_sets: set[frozenset[str]] = set()
        self.uses: Counter[str] = Counter()  # compositions each skill is in so far, to spread them evenly
        # Long skills in a set of the kind being built: each joins one set per kind, since long skills
        # dominate the cost of a CPU evaluation (they appear often enough to measure, not in proportion).
        self.group_longs: set[str] = set()

    def system(self, cls: str) -> str:
        return "" if cls == "none" else self.systems[cls].draw()

    def pick_skills(self, k: int, reserve: int, test_only: bool) -> list[str]:
        """k distinct skills in a random order, drawn towards the least used so far.

        With `test_only`, exactly one of them is a held-out (TEST_ONLY) skill, otherwise none: the callers ask for
        one such set in four, so that about a quarter of these cases are held out for test by skill.
        At most one long skill (each long one in one set per kind of case), at most COMPOSE_MAX_TOKENS
        with `reserve` tokens (system text, history) on top, and never the same set twice.
        """
        shared = [n for n in sorted(self.skills) if n not in self.test_only]
        while True:
            chosen = [self._draw(list(self.test_only))] if test_only else []
            while len(chosen) < k:
                chosen.append(self._draw([n for n in shared if n not in chosen]))
            self.rng.shuffle(chosen)
            tokens = sum(approx_tokens(self.skills[n].text) for n in chosen) + reserve
            longs = [n for n in chosen if self.skills[n].long]
            if (len(longs) <= 1 and not self.group_longs.intersection(longs)
                    and tokens <= COMPOSE_MAX_TOKENS and frozenset(chosen) not in self.used_sets):
                self.used_sets.add(frozenset(chosen))
                self.uses.update(chosen)
                self.group_longs.update(longs)
                return chosen

    def _draw(self, pool: list[str]) -> str:
        return self.rng.choices(pool, weights=[1 / (1 + self.uses[n]) for n in pool])[0]

    def lone(self) -> list[Case]:
        cases = []
        classes = _Deck(["sentence", "short", "paragraph", "paragraphs"], self.rng)
        for name, skill in self.skills.items():
            for i in (1, 2):
                q = self.questions[name].draw()
                cases.append(Case(f"{self.prefix}lone-empty-{name}-{i}", [name], q[0],
                                  f"kind={self.prefix}lone-empty system=none focus={name} focus_kind={skill.kind}"))
            for i in (1, 2):
                cls, q = classes.draw(), self.questions[name].draw()
                cases.append(Case(f"{self.prefix}lone-system-{name}-{i}", [name], q[0],
                                  f"kind={self.prefix}lone-system system={cls} focus={name} focus_kind={skill.kind}",
                                  system=self.system(cls)))
        return cases

    def compositions(self, k: int, combos: int) -> list[Case]:
        """`combos` sets of k skills, each in two different orders, focus position cycling."""
        cases, self.group_longs = [], set()
        classes = _Deck(["none", "none", "sentence", "short", "paragraph", "paragraphs"], self.rng)
        for combo in range(1, combos + 1):
            first_cls = classes.draw()
            first_system = self.system(first_cls)
            order = self.pick_skills(k, reserve=MAX_SYSTEM_TOKENS, test_only=combo % 4 == 0)
            orders = [order, order[::-1]]
            if k > 2:  # a different permutation that also changes which skill comes first
                orders[1] = self.rng.sample(order, k)
                while orders[1][0] == order[0]:
                    orders[1] = self.rng.sample(order, k)
            for tag, skills in zip("ab", orders):
                cls = first_cls if tag == "a" else classes.draw()
                system = first_system if tag == "a" else self.system(cls)
                pos = (combo * 2 + (tag == "b")) % k
                focus = skills[pos]
                q = self.questions[focus].draw()
                cases.append(Case(
                    f"{self.prefix}compose-{k}-{combo:02d}{tag}", skills, q[0],
                    f"kind={self.prefix}compose-{k} system={cls} focus={focus} focus_kind={self.skills[focus].kind} "
                    f"focus_pos={pos + 1} combo={self.prefix}c{k}-{combo:02d}",
                    system=system))
        return cases

    def threads(self) -> list[Case]:
        """One case per skill from its hand-written thread: the last question leans on earlier turns."""
        cases = []
        classes = _Deck(["none", "none", "sentence", "short", "paragraph", "paragraphs"], self.rng)
        for name, skill in self.skills.items():
            cls = classes.draw()
            turns = skill.thread
            history = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns[:-1])]
            cases.append(Case(f"multi-thread-{name}", [name], turns[-1],
                              f"kind=multi-turn system={cls} focus={name} focus_kind={skill.kind} "
                              f"turns={len(turns)} history=thread",
                              system=self.system(cls), history=history))
        return cases

    def histories(self, count: int) -> list[Case]:
        """Compositions of 1-3 skills with 1-3 earlier exchanges drawn from the skills' questions."""
        cases, self.group_longs = [], set()
        classes = _Deck(["none", "sentence", "short", "paragraph", "paragraphs"], self.rng)
        for i in range(count):
            k, exchanges, cls = 1 + i % 3, 1 + (i // 3) % 3, classes.draw()
            system = self.system(cls)
            skills = self.pick_skills(k, reserve=MAX_SYSTEM_TOKENS + HISTORY_TOKENS, test_only=i % 4 == 3)
            focus = skills[i % k]
            history: list[dict[str, str]] = []
            asked: list[tuple[str, str]] = []
            for j in range(exchanges):
                source = skills[(i + j + 1) % k]
                q = self.questions[source].draw(avoid=tuple(asked))
                asked.append(q)
                history += [{"role": "user", "content": q[0]}, {"role": "assistant", "content": q[1]}]
            q = self.questions[focus].draw(avoid=tuple(asked))
            cases.append(Case(f"multi-{k}-{i + 1:02d}", skills, q[0],
                              f"kind=multi-turn system={cls} focus={focus} focus_kind={self.skills[focus].kind} "
                              f"focus_pos={i % k + 1} turns={2 * exchanges + 1} history=bank",
                              system=system, history=history))
        return cases


def build_cases(skills: dict[str, Skill]) -> tuple[list[Case], list[Case]]:
    """(single-turn cases, multi-turn cases), in a fixed order."""
    b = _Builder(skills)
    single = b.lone() + b.compositions(2, 18) + b.compositions(3, 15) + b.compositions(4, 14)
    multi = b.threads() + b.histories(21)
    return single, multi


def build_short_cases(skills: dict[str, Skill]) -> list[Case]:
    """The short skills' family: each alone (with and without a system text) and in compositions of
    two and three. Skills of 100-200 tokens leave a splice little unseen text to size a repair by (two
    of them composed give the second a budget under the probe's floor), which the main family's
    compositions of 300-600-token skills never reach."""
    b = _Builder(skills, family="short", test_only=SHORT_TEST_ONLY, prefix="short-")
    return b.lone() + b.compositions(2, 10) + b.compositions(3, 6)


def assign_splits(cases: list[Case], test_only: tuple[str, ...] = TEST_ONLY) -> dict[str, str]:
    """Case id -> "dev" or "test", by the split rule in the module docstring."""
    parts: dict[str, str] = {}
    for kind in sorted({kind_of(c) for c in cases}):
        group = [c for c in cases if kind_of(c) == kind]
        free = sorted((c for c in group if not any(s in test_only for s in c.skills)),
                      key=lambda c: hashlib.sha256(f"{SEED}:{c.id}".encode()).hexdigest())
        dev = {c.id for c in free[: len(group) // 2]}
        parts.update({c.id: "dev" if c.id in dev else "test" for c in group})
    return parts


def kind_of(case: Case) -> str:
    return case.note.split()[0].removeprefix("kind=")


# --------------------------------------------------------------------------------------------------
# Files


def _toml_str(value: str) -> str:
    """A TOML basic string; JSON's escapes are a subset of TOML's."""
    return json.dumps(value, ensure_ascii=False)


def manifest_files(skill: Skill) -> dict[str, str]:
    """skill.toml (and prompt.md when the text is long), keyed by path under the skill's folder."""
    lines = [f"name = {_toml_str(skill.name)}", f"version = {_toml_str(skill.version)}",
             f"description = {_toml_str(skill.description)}"]
    files = {}
    if len(skill.text) > INLINE_MAX_CHARS:
        lines.append('prompt_file = "prompt.md"')
        files["prompt.md"] = skill.text
    else:
        if "'''" in skill.text:
            raise ValueError(f"{skill.name}: the prompt contains ''', which an inline TOML literal string cannot hold")
        lines.append("prompt = '''\n" + skill.text + "'''")
    for f in skill.fields:
        lines += ["", f"[fields.{f.name}]", f"default = {_toml_str(f.default)}",
                  f"description = {_toml_str(f.description)}", f"label = {_toml_str(f.label)}"]
    files["skill.toml"] = "\n".join(lines) + "\n"
    return files


def generate() -> dict[str, str]:
    """Every file of the corpus, keyed by its path relative to evals/corpus/."""
    skills = {s.name: s for s in (build() for build in SKILLS)}
    short = {s.name: s for s in (build() for build in SHORT_SKILLS)}
    missing = [n for n in TEST_ONLY if n not in skills] + [n for n in SHORT_TEST_ONLY if n not in short]
    if missing:
        raise ValueError(f"TEST_ONLY or SHORT_TEST_ONLY names unknown skills: {', '.join(missing)}")
    single, multi = build_cases(skills)
    split = assign_splits(single + multi)
    check_split(single, multi, split)
    short_cases = build_short_cases(short)
    split |= assign_splits(short_cases, SHORT_TEST_ONLY)
    check_split(short_cases, [], split, SHORT_TEST_ONLY)
    cases = single + multi + short_cases
    files: dict[str, str] = {}
    for skill in [*skills.values(), *short.values()]:
        for rel, text in manifest_files(skill).items():
            files[f"skills/{skill.name}/{rel}"] = text
    for part in sorted({part_of(c, split) for c in cases}):
        files[f"{part}.jsonl"] = "".join(c.to_json() + "\n" for c in cases if part_of(c, split) == part)
    held_out = (*TEST_ONLY, *SHORT_TEST_ONLY)
    files["index.json"] = json.dumps(index({**skills, **short}, cases, split, held_out), indent=2,
                                     ensure_ascii=False) + "\n"
    return files


def part_of(case: Case, split: dict[str, str]) -> str:
    """The file a case goes to: dev or test, then -multiturn (histories, which the plain case loader
    does not read) or -short (the short skills' family, so the main files stay as they were)."""
    suffix = "-short" if case.id.startswith("short-") else "-multiturn" if case.history else ""
    return split[case.id] + suffix


def check_split(single: list[Case], multi: list[Case], split: dict[str, str],
                test_only: tuple[str, ...] = TEST_ONLY) -> None:
    """Refuse a split that cannot do its job (a fixed seed makes this a one-time check, kept honest)."""
    ids = [c.id for c in single + multi]
    if len(ids) != len(set(ids)):
        raise ValueError("duplicate case ids")
    problems = []
    for cases in (single, multi):
        for kind in sorted({kind_of(c) for c in cases}):
            parts = {split[c.id] for c in cases if kind_of(c) == kind}
            if parts != {"dev", "test"}:
                problems.append(f"kind {kind} appears only in {', '.join(sorted(parts))}")
    used = {part: {s for c in single + multi if split[c.id] == part for s in c.skills} for part in ("dev", "test")}
    shared = sorted(set(n for c in single for n in c.skills) - set(test_only))
    problems += [f"test-only skill {n} appears in dev" for n in test_only if n in used["dev"]]
    problems += [f"test-only skill {n} is never tested" for n in test_only if n not in used["test"]]
    problems += [f"skill {n} is missing from {part}" for n in shared for part in ("dev", "test") if n not in used[part]]
    if problems:
        raise ValueError("the split does not hold: " + "; ".join(problems))


def index(skills: dict[str, Skill], cases: list[Case], split: dict[str, str], held_out: tuple[str, ...]) -> dict:
    """What per-kind reports need without re-deriving it: each skill's kind, opening and size, and the
    cases and estimated prompt tokens of every part."""
    parts: dict[str, dict] = {}
    for case in cases:
        part = part_of(case, split)
        entry = parts.setdefault(part, {"cases": 0, "approx_prompt_tokens": 0, "kinds": {}})
        entry["cases"] += 1
        entry["approx_prompt_tokens"] += case_tokens(case, skills)
        entry["kinds"][kind_of(case)] = entry["kinds"].get(kind_of(case), 0) + 1
    return {
        "seed": SEED,
        "test_only": list(TEST_ONLY),
        "short_test_only": list(SHORT_TEST_ONLY),
        "skills": [
            {"name": s.name, "version": s.version, "kind": s.kind, "opening": s.opening,
             "chars": len(s.text), "approx_tokens": approx_tokens(s.text), "fields": [f.name for f in s.fields],
             "split": "test-only" if s.name in held_out else "dev+test"}
            for s in skills.values()
        ],
        "parts": {name: parts[name] for name in sorted(parts)},
    }


def differences(files: dict[str, str], root: Path) -> list[str]:
    """Paths under `root` that differ from `files`: changed, missing or not generated."""
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.exists() else set()
    out = [f"missing: {rel}" for rel in sorted(set(files) - on_disk)]
    out += [f"not generated: {rel}" for rel in sorted(on_disk - set(files))]
    out += [f"differs: {rel}" for rel in sorted(set(files) & on_disk)
            if (root / rel).read_bytes() != files[rel].encode("utf-8")]
    return out


def write(files: dict[str, str], root: Path) -> None:
    """Write the corpus, removing files this generator no longer produces (it owns the folder)."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != text.encode("utf-8"):
            path.write_bytes(text.encode("utf-8"))
    for path in sorted(root.rglob("*"), reverse=True):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in files:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="regenerate in memory and exit 1 if the files under evals/corpus/ differ")
    args = parser.parse_args(argv)
    files = generate()
    if args.check:
        diff = differences(files, OUT)
        for line in diff:
            print(line, file=sys.stderr)
        if diff:
            print("evals/corpus/ is out of date: run python scripts/make_corpus.py", file=sys.stderr)
            return 1
        return 0
    write(files, OUT)
    summary = json.loads(files["index.json"])["parts"]
    for part, entry in summary.items():
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(entry["kinds"].items()))
        print(f"{part}: {entry['cases']} cases, ~{entry['approx_prompt_tokens']} prompt tokens ({kinds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
