-- A small legacy RoastMyPost database, as Prisma migrations create it (the models the job runner
-- touches, trimmed to their relevant columns): quoted camelCase names, text ids, timestamp(3)
-- columns holding UTC, and the "JobStatus" enum.

CREATE TYPE "JobStatus" AS ENUM ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED');

CREATE TABLE "Document" (
    "id" TEXT NOT NULL,
    "publishedDate" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    "submittedById" TEXT NOT NULL,
    CONSTRAINT "Document_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "DocumentVersion" (
    "id" TEXT NOT NULL,
    "version" INTEGER NOT NULL DEFAULT 1,
    "title" TEXT NOT NULL,
    "authors" TEXT[],
    "urls" TEXT[],
    "platforms" TEXT[],
    "intendedAgents" TEXT[],
    "content" TEXT NOT NULL,
    "markdownPrepend" TEXT,
    "documentId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "DocumentVersion_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "DocumentVersion_documentId_version_key" ON "DocumentVersion"("documentId", "version");

CREATE TABLE "Agent" (
    "id" TEXT NOT NULL,
    "submittedById" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    "isDeprecated" BOOLEAN NOT NULL DEFAULT false,
    CONSTRAINT "Agent_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "AgentVersion" (
    "id" TEXT NOT NULL,
    "agentId" TEXT NOT NULL,
    "version" INTEGER NOT NULL,
    "name" TEXT NOT NULL,
    "description" TEXT NOT NULL,
    "primaryInstructions" TEXT,
    "selfCritiqueInstructions" TEXT,
    "providesGrades" BOOLEAN NOT NULL DEFAULT false,
    "readme" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "AgentVersion_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "AgentVersion_agentId_version_key" ON "AgentVersion"("agentId", "version");

CREATE TABLE "Evaluation" (
    "id" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "documentId" TEXT NOT NULL,
    "agentId" TEXT NOT NULL,
    CONSTRAINT "Evaluation_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "Evaluation_documentId_agentId_key" ON "Evaluation"("documentId", "agentId");

CREATE TABLE "Job" (
    "id" TEXT NOT NULL,
    "status" "JobStatus" NOT NULL DEFAULT 'PENDING',
    "llmThinking" TEXT,
    "durationInSeconds" INTEGER,
    "logs" TEXT,
    "error" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    "completedAt" TIMESTAMP(3),
    "startedAt" TIMESTAMP(3),
    "evaluationId" TEXT NOT NULL,
    "evaluationVersionId" TEXT,
    "originalJobId" TEXT,
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "priceInDollars" DECIMAL(10,6),
    CONSTRAINT "Job_pkey" PRIMARY KEY ("id")
);
CREATE INDEX "Job_status_idx" ON "Job"("status");

ALTER TABLE "DocumentVersion" ADD CONSTRAINT "DocumentVersion_documentId_fkey"
    FOREIGN KEY ("documentId") REFERENCES "Document"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "AgentVersion" ADD CONSTRAINT "AgentVersion_agentId_fkey"
    FOREIGN KEY ("agentId") REFERENCES "Agent"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "Evaluation" ADD CONSTRAINT "Evaluation_documentId_fkey"
    FOREIGN KEY ("documentId") REFERENCES "Document"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "Evaluation" ADD CONSTRAINT "Evaluation_agentId_fkey"
    FOREIGN KEY ("agentId") REFERENCES "Agent"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "Job" ADD CONSTRAINT "Job_evaluationId_fkey"
    FOREIGN KEY ("evaluationId") REFERENCES "Evaluation"("id") ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE "Job" ADD CONSTRAINT "Job_originalJobId_fkey"
    FOREIGN KEY ("originalJobId") REFERENCES "Job"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- name: seed
INSERT INTO "Document" ("id", "updatedAt", "submittedById") VALUES
    ('doc_a1b2c3d4e5f6', now(), 'user_1'), ('doc_z9y8x7w6v5u4', now(), 'user_1');
INSERT INTO "DocumentVersion" ("id", "version", "title", "authors", "content", "documentId", "updatedAt") VALUES
    ('dv_1', 1, 'Naps, revisited (draft)', '{Ann Author}', 'A first draft about naps.', 'doc_a1b2c3d4e5f6', now()),
    ('dv_2', 2, 'Naps, revisited', '{Ann Author}',
     'Short naps improve alertness. A twenty-minute nap beats coffee in one small study of nurses.',
     'doc_a1b2c3d4e5f6', now()),
    ('dv_3', 1, 'Spreadsheets', '{Bo Writer,Cy Writer}',
     'VisiCalc shipped in 1979. Lotus 1-2-3 followed in 1983 and made the IBM PC a business machine.',
     'doc_z9y8x7w6v5u4', now());
INSERT INTO "Agent" ("id", "submittedById", "updatedAt") VALUES ('agent_clarity', 'user_2', now()),
    ('agent_factcheck', 'user_2', now());
INSERT INTO "AgentVersion" ("id", "agentId", "version", "name", "description", "primaryInstructions",
                            "selfCritiqueInstructions", "providesGrades", "updatedAt") VALUES
    ('av_1', 'agent_clarity', 1, 'Clarity Coach', 'Flags unclear sentences.', 'Point out unclear sentences.',
     NULL, true, now()),
    ('av_2', 'agent_factcheck', 1, 'Fact Checker', 'Checks claims.', 'Check every factual claim.',
     'Review your own comments for overconfidence.', false, now());
INSERT INTO "Evaluation" ("id", "documentId", "agentId") VALUES
    ('ev_1', 'doc_a1b2c3d4e5f6', 'agent_clarity'), ('ev_2', 'doc_z9y8x7w6v5u4', 'agent_clarity'),
    ('ev_3', 'doc_a1b2c3d4e5f6', 'agent_factcheck'), ('ev_4', 'doc_z9y8x7w6v5u4', 'agent_factcheck');
INSERT INTO "Job" ("id", "status", "evaluationId", "originalJobId", "attempts", "createdAt", "updatedAt") VALUES
    ('job_failed', 'FAILED', 'ev_3', NULL, 3, now() - interval '3 hours', now()),
    ('job_done', 'COMPLETED', 'ev_2', NULL, 1, now() - interval '2 hours', now()),
    ('job_running', 'RUNNING', 'ev_4', NULL, 1, now() - interval '1 hour', now()),
    ('job_p1', 'PENDING', 'ev_1', NULL, 0, now() - interval '30 minutes', now()),
    ('job_p2', 'PENDING', 'ev_2', NULL, 0, now() - interval '20 minutes', now()),
    ('job_p3', 'PENDING', 'ev_3', 'job_failed', 1, now() - interval '10 minutes', now());
